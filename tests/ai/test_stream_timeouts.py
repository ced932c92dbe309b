"""Stream timeouts: the first event within ``first_byte_timeout`` (else the next upstream),
each later one within ``idle_timeout`` (else an error event, what was delivered billed),
with the fake upstream's ``ttft_ms``, ``chunk_delay_ms`` and ``stall_after`` faults."""

import anthropic
import openai
import pytest

from ai.models import UsageStatus
from tests.ai.conftest import make_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]
# Stalls far longer than the idle timeout the tests set.
STALL = {"stall_after": 3, "stall_ms": 1500}


def _stream(world, model):
    client = openai.OpenAI(base_url=world.base(), api_key=world.alice_key, max_retries=0)
    return client.chat.completions.create(model=model, messages=HI, stream=True)


def _text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_first_event_too_slow_fails_over_and_the_client_sees_only_the_second(
    world, acme, fake_upstream
):
    make_model(
        "ha",
        owner=acme,
        # The first upstream sends its headers at once, then no event for 3 s.
        base_urls=[fake_upstream.base_url(ttft_ms=3000, tokens=4), fake_upstream.base_url()],
        first_byte_timeout=0.3,
    )
    text = _text(list(_stream(world, "ha")))
    assert text == "".join(f"tok{i} " for i in range(20))
    (event,) = wait_for_usage(1)
    assert (event.status, event.attempts, event.upstream.name) == ("ok", 2, "ha-1")
    assert event.completion_tokens == 20


@pytest.mark.parametrize(
    "late",
    [
        {"latency_ms": 3000},  # no status line and headers in time
        {"latency_ms": 200, "ttft_ms": 200},  # each in time, the first event not
    ],
    ids=["headers", "headers-then-event"],
)
def test_the_first_byte_timeout_bounds_the_headers_and_the_first_event_together(
    world, acme, fake_upstream, late
):
    make_model(
        "ha",
        owner=acme,
        base_urls=[fake_upstream.base_url(**late), fake_upstream.base_url(tokens=3)],
        first_byte_timeout=0.3,
    )
    assert _text(list(_stream(world, "ha"))) == "tok0 tok1 tok2 "
    (event,) = wait_for_usage(1)
    assert (event.status, event.attempts, event.upstream.name) == ("ok", 2, "ha-1")


def test_a_first_event_too_slow_on_the_only_upstream_is_a_502(world, acme, fake_upstream):
    make_model(
        "slow", owner=acme, base_urls=[fake_upstream.base_url(ttft_ms=3000)], first_byte_timeout=0.3
    )
    with pytest.raises(openai.APIStatusError) as caught:
        list(_stream(world, "slow"))
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "upstream_error"
    (event,) = wait_for_usage(1)
    assert event.status == UsageStatus.UPSTREAM_ERROR and event.http_status == 502
    assert "no first event" in event.error


def test_a_stream_idle_too_long_ends_with_an_error_event_and_bills_what_was_delivered(
    world, acme, fake_upstream
):
    make_model("stall", owner=acme, base_urls=[fake_upstream.base_url(**STALL)], idle_timeout=0.3)
    received = []
    with pytest.raises(openai.APIError, match="sent nothing for 0.3s"):
        for chunk in _stream(world, "stall"):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "tok0 tok1 tok2 "
    (event,) = wait_for_usage(1)
    assert event.status == UsageStatus.UPSTREAM_ERROR and event.attempts == 1
    assert event.error == "mid-stream: idle timeout"
    assert event.completion_tokens == 3 and event.is_estimated


def test_a_slow_but_steady_stream_within_both_limits_passes(world, acme, fake_upstream):
    url = fake_upstream.base_url(ttft_ms=100, chunk_delay_ms=50, tokens=8)
    make_model("steady", owner=acme, base_urls=[url], first_byte_timeout=2, idle_timeout=2)
    assert _text(list(_stream(world, "steady"))) == "".join(f"tok{i} " for i in range(8))
    (event,) = wait_for_usage(1)
    assert (event.status, event.completion_tokens, event.is_estimated) == ("ok", 8, False)


def test_the_idle_timeout_ends_an_anthropic_stream_in_anthropics_shape(world, acme, fake_upstream):
    make_model("stall", owner=acme, base_urls=[fake_upstream.base_url(**STALL)], idle_timeout=0.3)
    client = anthropic.Anthropic(base_url=world.url, api_key=world.alice_key, max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="stall", max_tokens=100, messages=HI) as stream,
    ):
        list(stream)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"
    assert "sent nothing" in caught.value.body["error"]["message"]
    (event,) = wait_for_usage(1)
    assert (event.route, event.status) == ("messages", UsageStatus.UPSTREAM_ERROR)
    assert event.completion_tokens == 3


def test_the_idle_timeout_ends_a_responses_stream_with_response_failed(world, acme, fake_upstream):
    make_model("stall", owner=acme, base_urls=[fake_upstream.base_url(**STALL)], idle_timeout=0.3)
    client = openai.OpenAI(base_url=world.base(), api_key=world.alice_key, max_retries=0)
    events = list(client.responses.create(model="stall", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert "sent nothing" in events[-1].response.error.message
    (event,) = wait_for_usage(1)
    assert (event.route, event.status) == ("responses", UsageStatus.UPSTREAM_ERROR)
    assert event.completion_tokens == 3
