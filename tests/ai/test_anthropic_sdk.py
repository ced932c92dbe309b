"""The official Anthropic SDK against the running gateway, translated to the (OpenAI-style)
fake upstream: messages, streams, tools, count_tokens, errors, tenancy and usage."""

import json

import anthropic
import httpx
import pytest

from ai.models import ModelLink, UsageEvent
from panel.models import SiteSettings
from tests.ai.conftest import clear_of_a_minute_turn, make_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# The base URLs the README documents; the SDK appends /v1/messages.
BASES = ["", "/api", "/api/ai/anthropic", "/api/ai/openai"]


def _client(world, key=None, base="", **kwargs):
    return anthropic.Anthropic(
        base_url=world.url + base, api_key=key or world.alice_key, max_retries=0, **kwargs
    )


def _post(world, body, *, path="/v1/messages", headers=None):
    headers = headers if headers is not None else {"x-api-key": world.alice_key}
    return httpx.post(f"{world.url}{path}", headers=headers, json=body, timeout=10)


@pytest.fixture
def tool_model(world, acme, fake_upstream):
    """A chat model whose upstream answers by calling the request's tools."""
    return make_model("acme-tools", owner=acme, base_urls=[fake_upstream.base_url(tool_calls=1)])


# --- messages.create -----------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
def test_it_answers_a_message_under_every_documented_base_url(world, base):
    message = _client(world, base=base).messages.create(
        model="acme-chat", max_tokens=100, messages=HI
    )
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "acme-chat")
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("tok0 tok1 ")
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 20)
    assert message.usage.cache_read_input_tokens == 0
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.is_stream) == ("messages", "ok", False)
    assert (event.prompt_tokens, event.completion_tokens) == (2, 20)
    assert message.id == "msg_" + event.request_id.removeprefix("req_")


def test_it_sends_the_system_prompt_and_the_sampling_fields_upstream(world, fake_upstream):
    fake_upstream.clear()
    message = _client(world).messages.create(
        model="acme-chat",
        max_tokens=5,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=HI,
        # The newest SDKs dropped the sampling arguments; older clients still send them.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 40},
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    sent = fake_upstream.requests()[-1]["json"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {"role": "user", "content": "Hello there"},
    ]
    assert sent["model"] == "fake-chat"
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["top_k"]) == (
        5,
        0.2,
        0.9,
        40,
    )
    assert (sent["stop"], sent["user"]) == (["END"], "user-7")


def test_it_accepts_a_bearer_token_and_no_anthropic_version_header(world):
    client = anthropic.Anthropic(
        base_url=world.url, auth_token=world.alice_key, api_key=None, max_retries=0
    )
    assert client.messages.create(model="acme-chat", max_tokens=10, messages=HI).content
    body = {"model": "acme-chat", "max_tokens": 10, "messages": HI}
    response = _post(world, body, headers={"Authorization": f"Bearer {world.alice_key}"})
    assert response.status_code == 200, response.text
    assert response.headers["request-id"].startswith("req_")
    assert response.json()["type"] == "message"


def test_it_answers_with_the_callers_default_model_without_one(world):
    response = _post(world, {"max_tokens": 10, "messages": HI})
    assert response.json()["model"] == "acme-chat"


# --- tools -----------------------------------------------------------------------------------


def test_it_returns_a_tool_use_block_when_the_model_calls_a_tool(world, tool_model, fake_upstream):
    fake_upstream.clear()
    message = _client(world).messages.create(
        model="acme-tools",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert (block.type, block.id, block.name, block.input) == (
        "tool_use",
        "call_0",
        "get_weather",
        {"call": 0},
    )
    sent = fake_upstream.requests()[-1]["json"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert sent["tool_choice"] == "required"


def test_it_sends_a_tool_result_back_as_a_tool_message(world, tool_model, fake_upstream):
    client = _client(world)
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="acme-tools", max_tokens=100, messages=[question], tools=[WEATHER]
    )
    fake_upstream.clear()
    result = {"type": "tool_result", "tool_use_id": first.content[0].id, "content": "Sunny"}
    answer = client.messages.create(
        model="acme-chat",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [result, {"type": "text", "text": "Thanks"}]},
        ],
    )
    assert answer.content[0].text.startswith("tok0")
    sent = fake_upstream.requests()[-1]["json"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"call": 0}'},
            }
        ],
    }
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": "Sunny"},
        {"role": "user", "content": "Thanks"},
    ]


def test_it_streams_a_tool_call_as_input_json_deltas(world, tool_model):
    with _client(world).messages.stream(
        model="acme-tools", max_tokens=100, messages=HI, tools=[WEATHER]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    assert json.loads("".join(deltas)) == {"call": 0}
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"call": 0}
    assert final.content[0].name == "get_weather"


# --- streams ---------------------------------------------------------------------------------


def test_it_streams_text_and_the_final_usage_with_messages_stream(world):
    with _client(world).messages.stream(model="acme-chat", max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(f"tok{i} " for i in range(20))
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 20)
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.is_stream) == ("messages", "ok", True)
    assert (event.prompt_tokens, event.completion_tokens, event.is_estimated) == (2, 20, False)


def test_it_sends_anthropics_event_types_in_order_with_create_stream(world):
    events = list(
        _client(world).messages.create(model="acme-chat", max_tokens=3, messages=HI, stream=True)
    )
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.model == "acme-chat"
    assert events[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == 3


def test_it_sends_a_ping_after_message_start_on_the_wire(world):
    body = {"model": "acme-chat", "max_tokens": 2, "messages": HI, "stream": True}
    response = _post(world, body)
    assert response.headers["content-type"] == "text/event-stream"
    kinds = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-1] == "message_stop"


def test_it_estimates_the_usage_of_a_stream_without_a_usage_block(world, acme, fake_upstream):
    make_model("quiet", owner=acme, base_urls=[fake_upstream.base_url(no_usage=True)])
    with _client(world).messages.stream(model="quiet", max_tokens=100, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 20
    assert wait_for_usage(1)[0].is_estimated


def test_it_ends_a_stream_cut_upstream_with_an_error_event(world, acme, fake_upstream):
    make_model("cut", owner=acme, base_urls=[fake_upstream.base_url(drop_after=3)])
    client = _client(world)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="cut", max_tokens=100, messages=HI) as stream,
    ):
        list(stream)
    assert caught.value.body["error"]["type"] == "api_error"
    [event] = wait_for_usage(1)
    assert event.status == "upstream_error"


def test_it_records_one_cancelled_event_when_the_client_leaves_mid_stream(
    world, acme, fake_upstream
):
    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=50)])
    body = {"model": "slow", "max_tokens": 100, "messages": HI, "stream": True}
    headers = {"x-api-key": world.alice_key}
    with httpx.stream("POST", f"{world.url}/v1/messages", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line == "event: content_block_delta":
                break
    [event] = wait_for_usage(1)
    assert (event.route, event.status) == ("messages", "client_cancelled")


# --- count_tokens ----------------------------------------------------------------------------


def test_it_counts_tokens_without_calling_upstream_or_billing(world, fake_upstream):
    fake_upstream.clear()
    client = _client(world)
    short = client.messages.count_tokens(model="acme-chat", messages=HI)
    longer = client.messages.count_tokens(
        model="acme-chat", system="You answer questions.", messages=HI, tools=[WEATHER]
    )
    assert 0 < short.input_tokens < longer.input_tokens
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


def test_it_refuses_to_count_for_an_outsider_or_a_bad_key(world):
    with pytest.raises(anthropic.NotFoundError) as caught:
        _client(world, key=world.charlie_key).messages.count_tokens(model="acme-chat", messages=HI)
    assert caught.value.body["error"]["available_models"] == ["charlie-chat"]
    with pytest.raises(anthropic.AuthenticationError):
        _client(world, key="sb-wrong").messages.count_tokens(model="acme-chat", messages=HI)


# --- errors ----------------------------------------------------------------------------------


def test_it_raises_authentication_error_for_a_bad_key(world):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        _client(world, key="sb-wrong").messages.create(
            model="acme-chat", max_tokens=10, messages=HI
        )
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert caught.value.body["request_id"].startswith("req_")


def test_it_raises_not_found_for_an_unknown_model(world):
    with pytest.raises(anthropic.NotFoundError) as caught:
        _client(world).messages.create(model="nope", max_tokens=10, messages=HI)
    error = caught.value.body["error"]
    assert error["type"] == "not_found_error"
    assert error["available_models"] == ["acme-chat", "acme-embed", "acme-image"]
    assert not UsageEvent.objects.exists()


def test_it_raises_rate_limit_error_over_a_limit(world):
    ModelLink.objects.filter(model=world.chat).update(requests_per_minute=1)
    client = _client(world)
    clear_of_a_minute_turn()
    client.messages.create(model="acme-chat", max_tokens=10, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="acme-chat", max_tokens=10, messages=HI)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(wait_for_usage(1)) == 1


def test_it_raises_permission_denied_for_a_key_without_proxy(world):
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        _client(world, key=world.read_only_key).messages.create(
            model="acme-chat", max_tokens=10, messages=HI
        )
    assert caught.value.body["error"]["type"] == "permission_error"


def test_it_raises_a_server_error_when_no_upstream_answers(world, acme, fake_upstream):
    make_model("down", owner=acme, base_urls=[fake_upstream.base_url(status=500)])
    with pytest.raises(anthropic.InternalServerError) as caught:
        _client(world).messages.create(model="down", max_tokens=10, messages=HI)
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"
    assert wait_for_usage(1)[0].status == "upstream_error"


def test_it_passes_an_upstreams_refusal_on_in_anthropics_shape(world, acme, fake_upstream):
    make_model("picky", owner=acme, base_urls=[fake_upstream.base_url(status=400)])
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as caught:
            _client(world).messages.create(model="picky", max_tokens=10, messages=HI, stream=stream)
        assert caught.value.body["error"]["type"] == "invalid_request_error"
        assert "injected error" in caught.value.body["error"]["message"]


def test_it_raises_bad_request_for_a_missing_max_tokens(world):
    response = _post(world, {"model": "acme-chat", "messages": HI})
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": response.headers["x-request-id"],
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"messages": "Hello"}, "messages"),
        ({"messages": [5]}, "messages.0"),
        ({"messages": [{"role": "system", "content": "Hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0.type",
        ),
        ({"system": 5}, "system"),
        ({"model": 5}, "model"),
        ({"tools": "all"}, "tools"),
        ({"tools": [{"type": "web_search_20250305", "name": "web"}]}, "tools.0.type"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"temperature": "hot"}, "temperature"),
        ({"metadata": "me"}, "metadata"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_it_refuses_a_field_of_the_wrong_type_with_a_400_naming_it(
    world, fake_upstream, fields, param
):
    fake_upstream.clear()
    response = _post(world, {"model": "acme-chat", "max_tokens": 10, "messages": HI, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(param), error
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_it_refuses_a_body_that_is_no_json_object_in_anthropics_shape(world, body):
    response = httpx.post(
        f"{world.url}/v1/messages",
        headers={"x-api-key": world.alice_key, "content-type": "application/json"},
        content=body,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_it_refuses_a_body_over_the_limit_with_anthropics_413(world, settings, fake_upstream):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    fake_upstream.clear()
    pad = "a" * 2048
    body = {"model": "acme-chat", "max_tokens": 10, "messages": [{"role": "user", "content": pad}]}
    with pytest.raises(anthropic.APIStatusError) as caught:
        _client(world).messages.create(**body)
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"
    assert not fake_upstream.requests()


def test_it_answers_a_get_with_a_405_in_anthropics_shape(world):
    response = httpx.get(f"{world.url}/v1/messages", headers={"x-api-key": world.alice_key})
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- tenancy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_it_shows_an_outsider_nothing(world, fake_upstream, charlie, stream):
    fake_upstream.clear()
    client = _client(world, key=world.charlie_key)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="acme-chat", max_tokens=10, messages=HI, stream=stream)
    assert caught.value.body["error"]["available_models"] == ["charlie-chat"]
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()
    # Their own model works, and is billed to them.
    assert client.messages.create(model="charlie-chat", max_tokens=10, messages=HI).content
    assert wait_for_usage(1)[0].user_id == charlie.id


def test_it_answers_503_in_anthropics_shape_when_the_ai_feature_is_off(world):
    SiteSettings.objects.update_or_create(pk=1, defaults={"is_ai_enabled": False})
    response = _post(world, {"model": "acme-chat", "max_tokens": 10, "messages": HI})
    assert response.status_code == 503
    assert response.json()["error"] == {
        "type": "overloaded_error",
        "message": "The AI feature is disabled on this server.",
    }
