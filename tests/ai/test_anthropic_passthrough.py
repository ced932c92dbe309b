"""Anthropic Messages passed through to Anthropic-style upstreams (``api_style`` anthropic),
with the official SDK against the running gateway: the body goes upstream as sent but for
``model``, the answer comes back as sent but for ``model``, usage billed from Anthropic's
block, failover mixing passed-through and translated upstreams, errors, tenancy."""

from decimal import Decimal

import anthropic
import httpx
import pytest

from ai.models import ApiStyle, UsageEvent
from fakeupstream.records import auth_fingerprint
from tests.ai.conftest import make_model, wait_for_usage
from tests.factories import UpstreamFactory

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
UPSTREAM_KEY = "sk-ant-upstream"


def _client(world, key=None):
    return anthropic.Anthropic(base_url=world.url, api_key=key or world.alice_key, max_retries=0)


def _claude(acme, *urls_and_styles, name="claude"):
    """A model whose upstreams (in order) have these base URLs and API styles."""
    model = make_model(name, owner=acme, base_urls=[])
    for priority, (url, style) in enumerate(urls_and_styles):
        UpstreamFactory(
            model=model,
            name=f"{name}-{priority}",
            base_url=url,
            priority=priority,
            provider_model_id="claude-upstream-id",
            api_style=style,
            api_key=UPSTREAM_KEY,
        )
    model.input_price_per_million, model.output_price_per_million = Decimal(2), Decimal(8)
    model.cached_input_price_per_million = Decimal("0.5")
    model.cache_write_price_per_million = Decimal("2.5")
    model.save()
    return model


def _header(sent: dict, name: str) -> str | None:
    return next((v for k, v in sent["headers"].items() if k.lower() == name), None)


def test_a_message_is_passed_through_as_sent_and_billed_from_anthropics_usage(
    world, acme, fake_upstream
):
    options = {"prompt_tokens": 10, "cached_tokens": 4, "cache_write_tokens": 3}
    _claude(acme, (fake_upstream.base_url(**options), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    message = _client(world).messages.create(
        model="claude",
        max_tokens=100,
        messages=HI,
        metadata={"user_id": "u-7"},
        extra_body={"top_k": 5},
        extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
    )
    assert (message.model, message.type, message.stop_reason) == ("claude", "message", "end_turn")
    assert message.content[0].text.startswith("tok0 tok1 ")
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (3, 20)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (4, 3)
    [sent] = fake_upstream.requests()
    assert sent["path"].endswith("/v1/messages")
    assert sent["json"] == {
        "model": "claude-upstream-id",
        "max_tokens": 100,
        "messages": HI,
        "metadata": {"user_id": "u-7"},
        "top_k": 5,
    }
    assert _header(sent, "x-api-key") == "sha256:" + auth_fingerprint(UPSTREAM_KEY)
    assert _header(sent, "anthropic-version") == "2023-06-01"
    assert _header(sent, "anthropic-beta") == "context-1m-2025-08-07"
    assert not sent["authorization"]["present"]
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.is_estimated) == ("messages", "ok", False)
    assert (event.prompt_tokens, event.cache_read_tokens, event.cache_write_tokens) == (10, 4, 3)
    assert event.completion_tokens == 20
    assert event.cost == Decimal("0.000176")  # the golden cost of this Anthropic block
    assert message.id != "msg_" + event.request_id.removeprefix("req_")  # the upstream's id


def test_a_stream_is_relayed_event_by_event_and_billed_once(world, acme, fake_upstream):
    options = {"prompt_tokens": 10, "cached_tokens": 4, "cache_write_tokens": 3}
    _claude(acme, (fake_upstream.base_url(**options), ApiStyle.ANTHROPIC))
    with _client(world).messages.stream(model="claude", max_tokens=100, messages=HI) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert message.model == "claude"
    assert message.content[0].text.startswith("tok0 tok1 ")
    assert (message.usage.output_tokens, message.usage.cache_read_input_tokens) == (20, 4)
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.is_stream) == ("messages", "ok", True)
    assert (event.prompt_tokens, event.cache_read_tokens, event.cache_write_tokens) == (10, 4, 3)
    assert (event.completion_tokens, event.is_estimated) == (20, False)
    assert event.cost == Decimal("0.000176")


@pytest.mark.parametrize("stream", [False, True])
def test_tools_pass_through_unchanged(world, acme, fake_upstream, stream):
    _claude(acme, (fake_upstream.base_url(tool_calls=1), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    request = {
        "model": "claude",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "any"},
    }
    client = _client(world)
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**request)
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"call": 0})
    [sent] = fake_upstream.requests()
    expected = {**request, "model": "claude-upstream-id"}
    if stream:
        expected["stream"] = True
    assert sent["json"] == expected


def test_it_fails_over_from_an_anthropic_upstream_to_a_translated_one(world, acme, fake_upstream):
    _claude(
        acme,
        (fake_upstream.base_url(status=529), ApiStyle.ANTHROPIC),
        (fake_upstream.base_url(), ApiStyle.OPENAI),
    )
    fake_upstream.clear()
    beta = {"anthropic-beta": "context-1m-2025-08-07"}
    message = _client(world).messages.create(
        model="claude", max_tokens=100, messages=HI, extra_headers=beta
    )
    assert message.model == "claude"
    assert message.content[0].text.startswith("tok0 ")
    first, second = fake_upstream.requests()
    assert first["path"].endswith("/v1/messages")
    assert _header(first, "anthropic-beta") == "context-1m-2025-08-07"
    assert second["path"].endswith("/v1/chat/completions")
    assert _header(second, "anthropic-beta") is None
    assert second["json"]["messages"] == HI and second["authorization"]["present"]
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts) == ("ok", 2)
    assert message.id == "msg_" + event.request_id.removeprefix("req_")  # translated


@pytest.mark.parametrize("stream", [False, True])
def test_it_fails_over_from_a_translated_upstream_to_an_anthropic_one(
    world, acme, fake_upstream, stream
):
    _claude(
        acme,
        (fake_upstream.base_url(status=503), ApiStyle.OPENAI),
        (fake_upstream.base_url(cached_tokens=1), ApiStyle.ANTHROPIC),
    )
    fake_upstream.clear()
    client = _client(world)
    if stream:
        with client.messages.stream(model="claude", max_tokens=100, messages=HI) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(model="claude", max_tokens=100, messages=HI)
    assert message.model == "claude"
    assert message.usage.cache_read_input_tokens == 1  # Anthropic's block, relayed
    first, second = fake_upstream.requests()
    assert first["path"].endswith("/v1/chat/completions")
    assert second["path"].endswith("/v1/messages")
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts, event.cache_read_tokens) == ("ok", 2, 1)


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_refusal_is_relayed_in_anthropics_shape(world, acme, fake_upstream, stream):
    _claude(acme, (fake_upstream.base_url(status=400), ApiStyle.ANTHROPIC))
    with pytest.raises(anthropic.BadRequestError) as caught:
        _client(world).messages.create(model="claude", max_tokens=10, messages=HI, stream=stream)
    body = caught.value.body
    assert body["type"] == "error"
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "fake upstream: injected error (status 400)",
    }
    assert caught.value.response.headers["request-id"].startswith("req_")
    [event] = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 400)


def test_an_upstream_failing_mid_stream_ends_it_with_an_anthropic_error(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(drop_after=3), ApiStyle.ANTHROPIC))
    client = _client(world)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="claude", max_tokens=100, messages=HI) as events,
    ):
        list(events)
    assert caught.value.body["error"]["type"] == "api_error"
    [event] = wait_for_usage(1)
    assert event.status == "upstream_error"


def test_a_client_leaving_mid_stream_is_recorded_once(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(chunk_delay_ms=50), ApiStyle.ANTHROPIC))
    body = {"model": "claude", "max_tokens": 100, "messages": HI, "stream": True}
    headers = {"x-api-key": world.alice_key}
    with httpx.stream("POST", f"{world.url}/v1/messages", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line == "event: content_block_delta":
                break
    [event] = wait_for_usage(1)
    assert (event.route, event.status) == ("messages", "client_cancelled")


@pytest.mark.parametrize("stream", [False, True])
def test_it_shows_an_outsider_nothing(world, acme, fake_upstream, stream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    client = _client(world, key=world.charlie_key)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude", max_tokens=10, messages=HI, stream=stream)
    assert "claude" not in caught.value.body["error"]["available_models"]
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("stream", [False, True])
def test_a_passed_through_reply_is_never_stored_in_the_response_cache(
    world, acme, fake_upstream, stream
):
    model = _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    model.response_cache_ttl = 300
    model.save()
    fake_upstream.clear()
    body = {"model": "claude", "max_tokens": 50, "messages": HI, "stream": stream}
    headers = {"x-api-key": world.alice_key, "anthropic-version": "2023-06-01"}

    replies = [
        httpx.post(f"{world.url}/v1/messages", json=body, headers=headers, timeout=30)
        for _ in range(2)
    ]

    assert [r.status_code for r in replies] == [200, 200]
    assert [r.headers.get("x-switchboard-cache") for r in replies] == ["miss", "miss"]
    assert len(fake_upstream.requests()) == 2  # both went upstream: nothing was kept


# --- what the translation cannot carry goes to Anthropic-style upstreams only ----------------

DOCUMENT = {
    "type": "document",
    "source": {"type": "text", "media_type": "text/plain", "data": "The sky is green."},
    "citations": {"enabled": True},
}
NATIVE_ONLY = {
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Sky?"}, DOCUMENT]}],
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "ex"}],
    "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
    "service_tier": "auto",
    "some_future_field": {"x": 1},  # a beta's field: sent with its anthropic-beta header
}
BETA = {"anthropic-beta": "some-future-2026-01-01"}


@pytest.mark.parametrize("stream", [False, True])
def test_what_translation_cannot_carry_passes_through_as_sent(world, acme, fake_upstream, stream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    body = {"model": "claude", "max_tokens": 200, **NATIVE_ONLY, "stream": stream}
    headers = {"x-api-key": world.alice_key, **BETA}
    response = httpx.post(f"{world.url}/v1/messages", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    [sent] = fake_upstream.requests()
    assert sent["path"].endswith("/v1/messages")
    assert sent["json"] == {**body, "model": "claude-upstream-id"}
    [event] = wait_for_usage(1)
    assert (event.route, event.status) == ("messages", "ok")


@pytest.mark.parametrize("stream", [False, True])
def test_an_untranslatable_request_skips_the_translated_upstreams(
    world, acme, fake_upstream, stream
):
    _claude(
        acme,
        (fake_upstream.base_url(), ApiStyle.OPENAI),
        (fake_upstream.base_url(), ApiStyle.ANTHROPIC),
    )
    fake_upstream.clear()
    body = {"model": "claude", "max_tokens": 100, **NATIVE_ONLY, "stream": stream}
    headers = {"x-api-key": world.alice_key, **BETA}
    response = httpx.post(f"{world.url}/v1/messages", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    [sent] = fake_upstream.requests()  # the OpenAI-style upstream, first in order, never asked
    assert sent["path"].endswith("/v1/messages")
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts) == ("ok", 1)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [DOCUMENT]}]},
            "messages.0.content.0.type",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web"}]}, "tools.0.type"),
        ({"mcp_servers": NATIVE_ONLY["mcp_servers"]}, "mcp_servers"),
    ],
)
def test_a_model_without_an_anthropic_upstream_refuses_it_before_admission(
    world, acme, fake_upstream, fields, param
):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.OPENAI))
    fake_upstream.clear()
    body = {"model": "claude", "max_tokens": 100, "messages": HI, **fields}
    response = httpx.post(
        f"{world.url}/v1/messages", json=body, headers={"x-api-key": world.alice_key}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(param)
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


def test_an_untranslatable_request_still_shows_an_outsider_nothing(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.OPENAI))
    body = {"model": "claude", "max_tokens": 100, **NATIVE_ONLY}
    headers = {"x-api-key": world.charlie_key}
    response = httpx.post(f"{world.url}/v1/messages", json=body, headers=headers, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_thinking_becomes_a_reasoning_effort_on_a_translated_upstream(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.OPENAI))
    fake_upstream.clear()
    _client(world).messages.create(
        model="claude",
        max_tokens=200,
        messages=HI,
        thinking={"type": "enabled", "budget_tokens": 10000},
        metadata={"user_id": "u-1"},
        service_tier="auto",
    )
    [sent] = fake_upstream.requests()
    assert sent["path"].endswith("/v1/chat/completions")
    assert (sent["json"]["reasoning_effort"], sent["json"]["user"]) == ("medium", "u-1")
    assert "service_tier" not in sent["json"] and "thinking" not in sent["json"]


@pytest.mark.parametrize(
    "thinking", ["on", {"type": "enabled"}, {"type": "enabled", "budget_tokens": "x"}]
)
def test_a_thinking_of_the_wrong_type_is_refused_even_with_an_anthropic_upstream(
    world, acme, fake_upstream, thinking
):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    body = {"model": "claude", "max_tokens": 100, "messages": HI, "thinking": thinking}
    response = httpx.post(
        f"{world.url}/v1/messages", json=body, headers={"x-api-key": world.alice_key}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("thinking")
    assert not fake_upstream.requests()


# --- the models list, in Anthropic's shape for the Anthropic SDK ------------------------------


def test_the_sdk_lists_and_retrieves_models_in_anthropics_shape(world, acme, fake_upstream):
    model = _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    client = _client(world)
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert "claude" in ids and "acme-chat" in ids
    assert (page.first_id, page.last_id, page.has_more) == (ids[0], ids[-1], False)
    info = client.models.retrieve("claude")
    assert (info.type, info.id) == ("model", "claude")
    assert info.display_name == (model.display_name or "claude")
    assert int(info.created_at.timestamp()) == int(model.created_at.timestamp())
    raw = httpx.get(
        f"{world.url}/v1/models",
        headers={"x-api-key": world.alice_key, "anthropic-version": "2023-06-01"},
    ).json()
    assert set(raw) == {"data", "has_more", "first_id", "last_id"}
    assert raw["data"][0]["created_at"].endswith("Z")


def test_without_anthropic_version_the_models_list_is_openais(world):
    response = httpx.get(f"{world.url}/v1/models", headers={"x-api-key": world.alice_key})
    assert response.json()["object"] == "list"
    assert all(m["object"] == "model" for m in response.json()["data"])


def test_an_outsider_retrieving_a_model_gets_anthropics_404(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    client = _client(world, key=world.charlie_key)
    assert "claude" not in [m.id for m in client.models.list().data]
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.models.retrieve("claude")
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "claude" in body["error"]["message"]


def test_a_bad_key_on_the_models_list_is_refused_in_anthropics_shape(world):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        _client(world, key="sk-wrong").models.list()
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_an_untranslatable_request_is_never_answered_from_the_response_cache(
    world, acme, fake_upstream, settings
):
    # The database's cache (Redis would keep an earlier run's reply under the same ids).
    settings.REDIS_URL = ""
    model = _claude(
        acme,
        (fake_upstream.base_url(), ApiStyle.OPENAI),
        (fake_upstream.base_url(), ApiStyle.ANTHROPIC),
    )
    model.response_cache_ttl = 300
    model.save()
    fake_upstream.clear()
    headers = {"x-api-key": world.alice_key}
    plain = {"model": "claude", "max_tokens": 50, "messages": HI}
    # The same text with a document: its translation (the text alone) is the plain one's.
    content = [{"type": "text", "text": HI[0]["content"]}, DOCUMENT]
    lossy = {**plain, "messages": [{"role": "user", "content": content}]}
    replies = [
        httpx.post(f"{world.url}/v1/messages", json=body, headers=headers, timeout=30)
        for body in (plain, lossy)
    ]
    assert [r.status_code for r in replies] == [200, 200]
    assert replies[0].headers["x-switchboard-cache"] == "miss"
    assert "x-switchboard-cache" not in replies[1].headers
    first, second = fake_upstream.requests()
    assert first["path"].endswith("/v1/chat/completions")
    assert second["path"].endswith("/v1/messages") and second["json"]["messages"] == [
        {"role": "user", "content": content}
    ]
