"""Routing and failover, with real upstream faults from the fake upstream."""

import httpx
import openai
import pytest

from ai.gateway import router
from ai.models import Upstream
from tests.ai.conftest import make_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

REFUSED = "http://127.0.0.1:1/v1"  # nothing listens on port 1
HI = [{"role": "user", "content": "Hi"}]


def _chat(world, model, **kwargs):
    client = openai.OpenAI(base_url=world.base(), api_key=world.alice_key, max_retries=0)
    return client.chat.completions.create(model=model, messages=HI, **kwargs)


@pytest.mark.parametrize(
    "primary",
    [
        lambda fake: REFUSED,
        lambda fake: fake.base_url(status=500),
        lambda fake: fake.base_url(status=429),
        lambda fake: fake.base_url(latency_ms=3000),
        lambda fake: fake.base_url(status=301),  # a redirect is not followed
        lambda fake: fake.base_url(status=308),
    ],
    ids=["refused", "http-500", "http-429", "timeout", "http-301", "http-308"],
)
def test_it_fails_over_to_the_secondary_without_the_client_noticing(
    world, acme, fake_upstream, primary
):
    make_model(
        "ha",
        owner=acme,
        base_urls=[primary(fake_upstream), fake_upstream.base_url()],
        first_byte_timeout=0.5,
    )
    completion = _chat(world, "ha")
    assert completion.choices[0].message.content.startswith("tok0")
    (event,) = wait_for_usage(1)
    assert event.status == "ok" and event.attempts == 2
    assert event.upstream.name == "ha-1"


def test_it_fails_over_a_stream_before_its_first_chunk(world, acme, fake_upstream):
    make_model(
        "ha", owner=acme, base_urls=[fake_upstream.base_url(status=503), fake_upstream.base_url()]
    )
    chunks = list(_chat(world, "ha", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("tok0")


def test_it_fails_over_when_the_first_chunk_is_too_slow(world, acme, fake_upstream):
    make_model(
        "ha",
        owner=acme,
        base_urls=[fake_upstream.base_url(ttft_ms=3000), fake_upstream.base_url()],
        first_byte_timeout=0.5,
    )
    chunks = list(_chat(world, "ha", stream=True))
    assert len(chunks) > 3


def test_it_ends_a_stream_cut_mid_way_with_an_error_event_and_records_partial_usage(
    world, acme, fake_upstream
):
    make_model("flaky", owner=acme, base_urls=[fake_upstream.base_url(drop_after=5)])
    received = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in _chat(world, "flaky", stream=True):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "tok0 tok1 tok2 tok3 tok4 "
    (event,) = wait_for_usage(1)
    assert event.status == "upstream_error"
    assert event.completion_tokens == 5 and event.is_estimated


def test_it_answers_502_when_every_upstream_fails(world, acme, fake_upstream):
    make_model("down", owner=acme, base_urls=[REFUSED, fake_upstream.base_url(status=500)])
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(world, "down")
    assert caught.value.status_code == 502
    (event,) = wait_for_usage(1)
    assert (event.status, event.attempts, event.http_status) == ("upstream_error", 2, 502)


def _raw_chat(world, model, **fields):
    return httpx.post(
        f"{world.base()}/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": model, "messages": HI, **fields},
        timeout=10,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [401, 403])
def test_it_answers_an_upstreams_own_auth_failure_with_a_502_not_invalid_api_key(
    world, acme, fake_upstream, status, stream
):
    # The client's key is fine; the upstream refused ours. That is an upstream failure.
    make_model("locked", owner=acme, base_urls=[fake_upstream.base_url(status=status)])
    response = _raw_chat(world, "locked", stream=stream)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "upstream_error"
    assert "invalid_api_key" not in response.text
    (event,) = wait_for_usage(1)
    assert (event.status, event.http_status, event.is_stream) == ("upstream_error", 502, stream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [401, 403])
def test_it_fails_over_when_an_upstream_refuses_its_credentials(
    world, acme, fake_upstream, status, stream
):
    make_model(
        "ha",
        owner=acme,
        base_urls=[fake_upstream.base_url(status=status), fake_upstream.base_url()],
    )
    response = _raw_chat(world, "ha", stream=stream)
    assert response.status_code == 200
    assert response.headers["x-switchboard-upstream"] == "ha-1"
    assert "tok0" in response.text
    (event,) = wait_for_usage(1)
    assert (event.status, event.attempts, event.upstream.name) == ("ok", 2, "ha-1")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_it_counts_upstream_auth_failures_for_the_breaker(
    world, acme, fake_upstream, settings, stream
):
    settings.GATEWAY_BREAKER_THRESHOLD = 2
    settings.GATEWAY_BREAKER_COOLDOWN = 300
    make_model(
        "ha", owner=acme, base_urls=[fake_upstream.base_url(status=401), fake_upstream.base_url()]
    )
    primary = Upstream.objects.get(name="ha-0")
    for _ in range(2):
        assert _raw_chat(world, "ha", stream=stream).status_code == 200
    assert router.breaker.is_open(primary.id)
    fake_upstream.clear()
    assert _raw_chat(world, "ha", stream=stream).status_code == 200
    assert len(fake_upstream.requests()) == 1  # the open breaker skipped the primary


def test_it_passes_an_upstream_client_error_through(world, acme, fake_upstream):
    make_model("strict", owner=acme, base_urls=[fake_upstream.base_url(status=400)])
    with pytest.raises(openai.BadRequestError):
        _chat(world, "strict")


def test_it_opens_the_breaker_after_repeated_failures_and_closes_it_after_a_success(
    world, acme, fake_upstream, settings
):
    settings.GATEWAY_BREAKER_THRESHOLD = 2
    settings.GATEWAY_BREAKER_COOLDOWN = 300
    make_model(
        "ha", owner=acme, base_urls=[fake_upstream.base_url(status=500), fake_upstream.base_url()]
    )
    primary, secondary = Upstream.objects.filter(model__name="ha").order_by("priority")
    for _ in range(2):
        _chat(world, "ha")
    assert router.breaker.is_open(primary.id)
    fake_upstream.clear()
    _chat(world, "ha")
    assert [r["path"] for r in fake_upstream.requests()] == ["/v1/chat/completions"]

    # Cooling upstreams are still tried when nothing else is left; a success closes the breaker.
    primary.base_url = fake_upstream.base_url(tokens=3)
    primary.save()
    secondary.is_enabled = False
    secondary.save()
    assert _chat(world, "ha").choices[0].message.content == "tok0 tok1 tok2 "
    assert not router.breaker.is_open(primary.id)


def test_it_spreads_traffic_by_weight_within_a_priority(world, acme, fake_upstream):
    model = make_model("spread", owner=acme, base_urls=[fake_upstream.base_url()])
    from tests.factories import UpstreamFactory

    UpstreamFactory(
        model=model,
        name="heavy",
        base_url=fake_upstream.base_url(tokens=2),
        priority=0,
        weight=9,
        provider_model_id="fake-chat",
    )
    served = [
        httpx.post(
            f"{world.base()}/chat/completions",
            headers={"Authorization": f"Bearer {world.alice_key}"},
            json={"model": "spread", "messages": HI},
        ).headers["x-switchboard-upstream"]
        for _ in range(100)
    ]
    assert served.count("heavy") > served.count("spread-0") > 0


def test_it_passes_unknown_and_tool_fields_through_untouched(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    sent = {
        "model": "echo",
        "messages": HI,
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 7,
        "stop": ["\n"],
        "top_p": 0.5,
        "n": 1,
        "logprobs": False,
        "user": "end-user-1",
        "x_custom": {"nested": [1, 2]},
    }
    response = httpx.post(
        f"{world.base()}/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json=sent,
    )
    import json

    received = json.loads(response.json()["choices"][0]["message"]["content"])
    assert received == {**sent, "model": "fake-chat"}
    assert response.json()["model"] == "echo"


def test_it_always_asks_a_streaming_upstream_for_usage(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url()])
    list(_chat(world, "echo", stream=True))
    (request,) = fake_upstream.requests()
    assert request["json"]["stream_options"] == {"include_usage": True}
    (event,) = wait_for_usage(1)
    assert event.completion_tokens == 20 and not event.is_estimated


def test_it_sends_the_upstream_key_only_to_the_upstream(world, fake_upstream):
    from fakeupstream import auth_fingerprint
    from tests.ai.conftest import UPSTREAM_SECRET

    response = httpx.post(
        f"{world.base()}/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "acme-chat", "messages": HI},
    )
    (request,) = fake_upstream.requests()
    assert request["authorization"]["sha256_prefix"] == auth_fingerprint(UPSTREAM_SECRET)
    assert UPSTREAM_SECRET not in response.text
    assert "127.0.0.1:" not in response.text
