"""The Responses API passed through to upstreams that serve it (``speaks_responses``), with
the OpenAI SDK against the running gateway: the body goes to the upstream's ``responses``
path (``store: false``, our stored history expanded into ``input``), the answer comes back
but for ``model``, usage billed from the Responses block, failover, errors, tenancy."""

import time
from decimal import Decimal

import httpx
import openai
import pytest

from ai.gateway import responses_store
from ai.models import StoredResponse, UsageEvent
from tests.ai.conftest import make_model, slow_response_writes, wait_for_usage
from tests.factories import UpstreamFactory

pytestmark = pytest.mark.django_db(transaction=True)

USAGE = {"prompt_tokens": 10, "cached_tokens": 6, "reasoning_tokens": 3}


def _client(world, key=None):
    return openai.OpenAI(base_url=world.base("/v1"), api_key=key or world.alice_key, max_retries=0)


def _model(acme, *urls_and_flags, name="native"):
    """A model whose upstreams (in order) have these base URLs and ``speaks_responses``."""
    model = make_model(name, owner=acme, base_urls=[])
    for priority, (url, speaks) in enumerate(urls_and_flags):
        UpstreamFactory(
            model=model,
            name=f"{name}-{priority}",
            base_url=url,
            priority=priority,
            provider_model_id="gpt-upstream",
            speaks_responses=speaks,
        )
    model.input_price_per_million, model.output_price_per_million = Decimal(2), Decimal(8)
    model.cached_input_price_per_million = Decimal("0.5")
    model.save()
    return model


def _stored(count: int) -> list[StoredResponse]:
    for _ in range(500):
        if responses_store.is_idle() and StoredResponse.objects.count() >= count:
            return list(StoredResponse.objects.order_by("created_at"))
        time.sleep(0.01)
    raise AssertionError(f"expected {count} stored responses")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_response_is_passed_through_and_billed_from_its_usage(world, acme, fake_upstream, stream):
    _model(acme, (fake_upstream.base_url(**USAGE), True))
    fake_upstream.clear()
    client = _client(world)
    if stream:
        events = list(client.responses.create(model="native", input="Hi there", stream=True))
        assert events[0].type == "response.created"
        assert events[0].response.model == "native"
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert "".join(deltas).startswith("tok0 tok1 ")
        assert events[-1].type == "response.completed"
        response = events[-1].response
    else:
        response = client.responses.create(model="native", input="Hi there")
    assert (response.model, response.status, response.store) == ("native", "completed", True)
    assert response.output_text.startswith("tok0 tok1 ")
    assert response.usage.input_tokens_details.cached_tokens == 6
    [sent] = fake_upstream.requests()
    assert sent["path"].endswith("/v1/responses")
    expected = {"model": "gpt-upstream", "input": "Hi there", "store": False}
    if stream:
        expected["stream"] = True
    assert sent["json"] == expected
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.is_stream) == ("responses", "ok", stream)
    assert (event.prompt_tokens, event.cache_read_tokens, event.completion_tokens) == (10, 6, 20)
    assert (event.reasoning_tokens, event.is_estimated) == (3, False)
    assert event.cost == Decimal("0.000171")  # the golden cost of this Responses block
    [stored] = _stored(1)
    assert stored.response["id"] == response.id
    assert stored.response["model"] == "native"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_stored_conversation_is_expanded_into_the_input(world, acme, fake_upstream, stream):
    _model(acme, (fake_upstream.base_url(tokens=2), True))
    client = _client(world)
    first = client.responses.create(model="native", input="One")
    _stored(1)
    fake_upstream.clear()
    if stream:
        events = list(
            client.responses.create(
                model="native", input="Two", previous_response_id=first.id, stream=True
            )
        )
        second = events[-1].response
    else:
        second = client.responses.create(model="native", input="Two", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    [sent] = fake_upstream.requests()
    assert "previous_response_id" not in sent["json"]
    assert sent["json"]["store"] is False
    sent_input = sent["json"]["input"]
    assert [item.get("role") for item in sent_input] == ["user", "assistant", "user"]
    assert sent_input[1]["content"][0]["text"] == "tok0 tok1 "
    assert sent_input[2] == {"role": "user", "content": "Two"}
    assert all("id" not in item for item in sent_input)


def test_it_fails_over_between_a_passed_through_and_a_translated_upstream(
    world, acme, fake_upstream
):
    _model(acme, (fake_upstream.base_url(status=500), True), (fake_upstream.base_url(), False))
    fake_upstream.clear()
    response = _client(world).responses.create(model="native", input="Hi")
    assert response.output_text.startswith("tok0 ")
    first, second = fake_upstream.requests()
    assert first["path"].endswith("/v1/responses")
    assert second["path"].endswith("/v1/chat/completions")
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts) == ("ok", 2)


def test_an_upstream_refusal_is_relayed(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(status=400), True))
    with pytest.raises(openai.BadRequestError) as caught:
        _client(world).responses.create(model="native", input="Hi")
    assert caught.value.body["message"] == "fake upstream: injected error (status 400)"
    [event] = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 400)


def test_it_shows_an_outsider_nothing(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(), True))
    fake_upstream.clear()
    with pytest.raises(openai.NotFoundError):
        _client(world, key=world.charlie_key).responses.create(model="native", input="Hi")
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


def test_a_client_leaving_mid_stream_is_recorded_once(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(chunk_delay_ms=50), True))
    body = {"model": "native", "input": "Hi", "stream": True}
    headers = {"Authorization": f"Bearer {world.alice_key}"}
    with httpx.stream("POST", f"{world.base()}/responses", json=body, headers=headers) as reply:
        for line in reply.iter_lines():
            if line == "event: response.output_text.delta":
                break
    [event] = wait_for_usage(1)
    assert (event.route, event.status) == ("responses", "client_cancelled")
    assert not _stored_soon()


def test_an_upstream_failing_mid_stream_ends_it_with_an_error_event(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(drop_after=2), True))
    events = list(_client(world).responses.create(model="native", input="Hi", stream=True))
    assert events[-1].type == "error"
    assert events[-1].message == "The upstream failed mid-stream; the reply is incomplete."
    [event] = wait_for_usage(1)
    assert event.status == "upstream_error"
    assert not _stored_soon()


def _stored_soon() -> bool:
    """Whether a response was stored, once the store has nothing pending."""
    for _ in range(500):
        if responses_store.is_idle():
            break
        time.sleep(0.01)
    return StoredResponse.objects.exists()


# --- what chat completions cannot carry goes to Responses upstreams only ---------------------

NATIVE_ONLY = {
    "tools": [{"type": "web_search"}],
    "tool_choice": {"type": "web_search"},
    "prompt_cache_key": "k-1",
    "input": [
        {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
        {"type": "item_reference", "id": "msg_1"},
    ],
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_what_translation_cannot_carry_skips_the_translated_upstreams(
    world, acme, fake_upstream, stream
):
    _model(acme, (fake_upstream.base_url(), False), (fake_upstream.base_url(), True))
    fake_upstream.clear()
    body = {"model": "native", **NATIVE_ONLY, "stream": stream}
    reply = httpx.post(
        f"{world.base('/v1')}/responses",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json=body,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    [sent] = fake_upstream.requests()  # the translated upstream, first in order, never asked
    assert sent["path"].endswith("/v1/responses")
    assert sent["json"] == {**body, "model": "gpt-upstream", "store": False}
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts) == ("ok", 1)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"prompt_cache_key": "k-1"}, "prompt_cache_key"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
    ],
)
def test_a_model_without_a_responses_upstream_refuses_it_before_admission(
    world, acme, fake_upstream, fields, param
):
    _model(acme, (fake_upstream.base_url(), False))
    fake_upstream.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        _client(world).responses.create(**{"model": "native", "input": "Hi", **fields})
    assert caught.value.body["param"] == param
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


def test_a_wrong_type_is_refused_even_with_a_responses_upstream(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(), True))
    fake_upstream.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        _client(world).responses.create(model="native", input="Hi", reasoning="high")
    assert caught.value.body["param"] == "reasoning"
    assert not fake_upstream.requests()


def test_an_untranslatable_request_still_shows_an_outsider_nothing(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(), True))
    fake_upstream.clear()
    with pytest.raises(openai.NotFoundError):
        _client(world, key=world.charlie_key).responses.create(
            model="native", input="Hi", tools=[{"type": "web_search"}]
        )
    assert not fake_upstream.requests()


def test_a_replayed_passed_through_response_streams_its_items(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(tokens=2), True))
    client = _client(world)
    created = client.responses.create(model="native", input="Hi")
    _stored(1)
    events = list(client.responses.retrieve(created.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == created.output_text == "tok0 tok1 "


def test_store_false_is_honoured_for_a_passed_through_response(world, acme, fake_upstream):
    _model(acme, (fake_upstream.base_url(), True))
    fake_upstream.clear()
    client = _client(world)
    created = client.responses.create(model="native", input="Hi", store=False)
    assert created.store is False
    [sent] = fake_upstream.requests()
    assert sent["json"]["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert responses_store.is_idle() and not StoredResponse.objects.exists()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_passed_through_response_is_in_the_database_before_the_client_has_it(
    world, acme, fake_upstream, monkeypatch, stream
):
    _model(acme, (fake_upstream.base_url(), True))
    slow_response_writes(monkeypatch, 0.3)
    client = _client(world)
    if stream:
        events = iter(client.responses.create(model="native", input="Hi", stream=True))
        completed = next(e for e in events if e.type == "response.completed")
        created_id = completed.response.id
    else:
        created_id = client.responses.create(model="native", input="Hi").id
    # What another process reads, as soon as the final event or the reply arrived.
    assert StoredResponse.objects.filter(id=created_id).exists()
    if stream:
        assert list(events) == []
