"""Prompt-caching billing: every protocol's usage block to the stored tokens and the exact cost.

Prices (credits per million tokens) are Anthropic-like: input 3, cache read 0.3, cache
write 3.75, output 15. Costs are micro-credits rounded half to even, written as credits.
"""

import json
from decimal import Decimal

import httpx
import pytest

from ai.gateway.pricing import (
    MAX_TOKENS,
    Usage,
    cost_micro,
    reply_usage,
    reserved_amounts,
    usage_from_block,
)
from ai.models import ModelLink, UsageEvent
from ai.selectors import ModelInfo
from orgs.models import LedgerEntry, LedgerKind
from orgs.services import credits, wallet_for, wallet_topup
from tests.ai.conftest import make_model, wait_for_usage

HI = [{"role": "user", "content": "Hi"}]


def _model(read: str | None = "0.3", write: str | None = "3.75") -> ModelInfo:
    return ModelInfo(
        id=1,
        name="m",
        display_name="m",
        kind="chat",
        is_active=True,
        tags=(),
        config={},
        input_price_per_million=Decimal("3"),
        output_price_per_million=Decimal("15"),
        price_per_image=Decimal("0"),
        created=0,
        upstreams=(),
        routable=(),
        cached_input_price_per_million=None if read is None else Decimal(read),
        cache_write_price_per_million=None if write is None else Decimal(write),
        response_cache_ttl=None,
    )


def _stored(usage: Usage) -> tuple[int, int, int, int, int]:
    return (
        usage.prompt_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.completion_tokens,
        usage.reasoning_tokens,
    )


# (upstream usage block, stored (prompt, cache read, cache write, completion, reasoning), cost)
GOLDEN = [
    pytest.param(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 50},
        },
        (1000, 800, 0, 200, 50),
        "0.003840",  # 200 x 3 + 800 x 0.3 + 200 x 15
        id="openai-cached",
    ),
    pytest.param(
        {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        (1000, 0, 0, 200, 0),
        "0.006000",
        id="openai-no-details",
    ),
    pytest.param(
        {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        (10, 0, 0, 1, 0),
        "0.000045",
        id="openai-null-details",
    ),
    pytest.param(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 300},
        },
        (1000, 200, 300, 0, 0),
        "0.002685",  # 500 x 3 + 200 x 0.3 + 300 x 3.75
        id="openai-cache-write",
    ),
    pytest.param(
        # LiteLLM's block for Anthropic (BerriAI/litellm#11364): prompt_tokens already
        # include the cache's tokens, repeated at the top level: never added twice (#9812).
        {
            "prompt_tokens": 98805,
            "completion_tokens": 5120,
            "total_tokens": 103925,
            "prompt_tokens_details": {
                "text_tokens": None,
                "cached_tokens": 66360,
                "cache_creation_tokens": 32435,
            },
            "cache_read_input_tokens": 66360,
            "completion_tokens_details": {"reasoning_tokens": 1710},
            "cache_creation_input_tokens": 32435,
        },
        (98805, 66360, 32435, 5120, 1710),
        "0.218369",  # 10 x 3 + 66360 x 0.3 + 32435 x 3.75 + 5120 x 15 = 218369.25
        id="litellm-anthropic-in-openai-shape",
    ),
    pytest.param(
        {"prompt_tokens": 3050, "completion_tokens": 0, "cache_creation_input_tokens": 2000},
        (3050, 0, 2000, 0, 0),
        "0.010650",  # 1050 x 3 + 2000 x 3.75
        id="openai-shape-top-level-cache-write",
    ),
    pytest.param(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 150},
        },
        (100, 100, 0, 10, 0),
        "0.000180",  # cached > prompt (new-api #5003): clamped, never a negative input
        id="openai-cached-over-prompt",
    ),
    pytest.param(
        {
            "prompt_tokens": 100,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 80},
        },
        (100, 80, 20, 0, 0),
        "0.000099",  # 80 x 0.3 + 20 x 3.75: the write is what is left of the prompt
        id="openai-read-and-write-over-prompt",
    ),
    pytest.param(
        {
            "prompt_tokens": 1,
            "completion_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 9},
        },
        (1, 0, 0, 5, 5),
        "0.000078",
        id="openai-reasoning-over-completion",
    ),
    pytest.param(
        {
            "prompt_tokens": 10,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": -4},
        },
        (10, 0, 0, 0, 0),
        "0.000030",  # a negative or non-integer detail is ignored
        id="openai-negative-detail",
    ),
    pytest.param(
        {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 3}},
        (3, 3, 0, 0, 0),
        "0.000001",  # 0.9 micro-credits round to 1
        id="openai-sub-micro",
    ),
    pytest.param({"prompt_tokens": 0, "completion_tokens": 0}, (0, 0, 0, 0, 0), "0", id="zero"),
    pytest.param(
        {
            "prompt_tokens": MAX_TOKENS,
            "completion_tokens": MAX_TOKENS,
            "prompt_tokens_details": {"cached_tokens": MAX_TOKENS},
        },
        (MAX_TOKENS, MAX_TOKENS, 0, MAX_TOKENS, 0),
        "32856.499799",  # (2**31 - 1) x (0.3 + 15), rounded to the micro-credit
        id="openai-huge",
    ),
    pytest.param(
        {
            "input_tokens": 50,
            "output_tokens": 100,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 2000,
        },
        (3050, 1000, 2000, 100, 0),
        "0.009450",  # 50 x 3 + 1000 x 0.3 + 2000 x 3.75 + 100 x 15: input excludes the cache
        id="anthropic-cache",
    ),
    pytest.param(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
        },
        (10, 0, 0, 5, 0),
        "0.000105",
        id="anthropic-null-cache",
    ),
    pytest.param(
        {
            "input_tokens": 1000,
            "input_tokens_details": {"cached_tokens": 400},
            "output_tokens": 300,
            "output_tokens_details": {"reasoning_tokens": 250},
            "total_tokens": 1300,
        },
        (1000, 400, 0, 300, 250),
        "0.006420",  # 600 x 3 + 400 x 0.3 + 300 x 15: input includes the cached
        id="responses-cached",
    ),
    pytest.param(
        {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 0},
        (10, 10, 0, 0, 0),
        "0.000003",
        id="responses-cached-over-input",
    ),
    pytest.param(
        {"input_tokens": 7, "output_tokens": 2},
        (7, 0, 0, 2, 0),
        "0.000051",
        id="responses-no-details",
    ),
]


@pytest.mark.parametrize(("block", "stored", "cost"), GOLDEN)
def test_a_usage_block_is_stored_and_priced_exactly(block, stored, cost):
    usage = usage_from_block(block)
    assert _stored(usage) == stored
    assert usage.uncached_tokens >= 0
    assert credits(cost_micro(_model(), usage)) == Decimal(cost)


# llama.cpp's llama-server: (usage block, timings beside it, stored tokens)
LLAMACPP = [
    pytest.param(
        {"prompt_tokens": 1000, "completion_tokens": 200},
        {"cache_n": 800, "prompt_n": 200, "predicted_n": 200},
        (1000, 800, 0, 200, 0),
        id="cache-n",
    ),
    pytest.param(
        {"prompt_tokens": 1000, "completion_tokens": 200, "prompt_tokens_details": {}},
        {"cache_n": 800},
        (1000, 800, 0, 200, 0),
        id="cache-n-empty-details",
    ),
    pytest.param(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        {"cache_n": 800},
        (1000, 0, 0, 200, 0),
        id="cached-tokens-zero-wins",
    ),
    pytest.param(
        {"prompt_tokens": 10, "completion_tokens": 1},
        {"cache_n": 50},
        (10, 10, 0, 1, 0),
        id="cache-n-over-prompt-clamped",
    ),
    pytest.param(
        {"prompt_tokens": 10, "completion_tokens": 1}, {"cache_n": -3}, (10, 0, 0, 1, 0), id="neg"
    ),
    pytest.param(
        {"prompt_tokens": 10, "completion_tokens": 1}, {"cache_n": "7"}, (10, 0, 0, 1, 0), id="str"
    ),
    pytest.param(
        {"input_tokens": 10, "output_tokens": 1}, {"cache_n": 7}, (10, 0, 0, 1, 0), id="responses"
    ),
]


@pytest.mark.parametrize(("block", "timings", "stored"), LLAMACPP)
def test_llamacpp_timings_give_the_cache_reads_a_block_lacks(block, timings, stored):
    assert _stored(usage_from_block(block, timings)) == stored
    reply = {"choices": [], "usage": block, "timings": timings}
    assert _stored(reply_usage(reply, {}, counts_images=False)) == stored


def test_a_llamacpp_block_is_priced_with_its_cache_reads():
    usage = usage_from_block({"prompt_tokens": 1000, "completion_tokens": 200}, {"cache_n": 800})
    assert credits(cost_micro(_model(), usage)) == Decimal("0.003840")  # as openai-cached


@pytest.mark.parametrize(
    "block",
    [
        None,
        {},
        "usage",
        {"prompt_tokens": -5, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"prompt_tokens": MAX_TOKENS + 1},
        {"input_tokens": MAX_TOKENS, "output_tokens": 0, "cache_read_input_tokens": 1},
        {"input_tokens": "10", "output_tokens": 1},
    ],
)
def test_a_block_that_cannot_be_stored_is_estimated_instead(block):
    assert usage_from_block(block) is None


def test_a_model_without_cache_prices_charges_the_input_price():
    usage = usage_from_block(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 800},
        }
    )
    assert credits(cost_micro(_model(read=None, write=None), usage)) == Decimal("0.006")


def test_a_reservation_holds_the_prompt_at_its_dearest_price():
    body = {"messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 10}
    tokens, micro = reserved_amounts(_model(), body, "chat.completions")
    prompt = tokens - 10
    assert micro == int(prompt * Decimal("3.75") + 10 * 15)
    cheap = _model(read="0.3", write="1")  # both below the input price
    assert reserved_amounts(cheap, body, "chat.completions")[1] == prompt * 3 + 10 * 15


# --- Through the gateway -------------------------------------------------------------------
#
# The acme "cache" model: input 2, cache read 0.5, cache write 2.5, output 8; the fake
# upstream answers 20 tokens with the usage block its path options describe.


def _cache_model(acme, fake_upstream, **usage):
    model = make_model("cache", owner=acme, base_urls=[fake_upstream.base_url(**usage)])
    model.input_price_per_million, model.output_price_per_million = Decimal(2), Decimal(8)
    model.cached_input_price_per_million = Decimal("0.5")
    model.cache_write_price_per_million = Decimal("2.5")
    model.save()
    return model


def _chat(world, *, stream: bool, path="/v1/chat/completions", **extra):
    body = {"model": "cache", "messages": HI, "stream": stream, **extra}
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    return httpx.post(f"{world.url}{path}", headers=auth, json=body, timeout=10)


def _event_tokens(event: UsageEvent) -> tuple:
    return (
        event.prompt_tokens,
        event.cache_read_tokens,
        event.cache_write_tokens,
        event.completion_tokens,
        event.reasoning_tokens,
        event.is_estimated,
    )


PIPELINE = [
    pytest.param(
        {"prompt_tokens": 10, "cached_tokens": 6, "reasoning_tokens": 3},
        (10, 6, 0, 20, 3),
        "0.000171",  # 4 x 2 + 6 x 0.5 + 20 x 8
        id="openai-cached",
    ),
    pytest.param(
        {"prompt_tokens": 10, "cached_tokens": 4, "cache_write_tokens": 3, "anthropic_usage": True},
        (10, 4, 3, 20, 0),
        "0.000176",  # 3 x 2 + 4 x 0.5 + 3 x 2.5 + 20 x 8 = 175.5, half to even
        id="anthropic-block",
    ),
    pytest.param(
        {"prompt_tokens": 5, "cached_tokens": 9},
        (5, 5, 0, 20, 0),
        "0.000162",  # clamped: 5 x 0.5 + 20 x 8 = 162.5, half to even
        id="cached-over-prompt",
    ),
    pytest.param({"prompt_tokens": 10}, (10, 0, 0, 20, 0), "0.000180", id="no-details"),
    pytest.param(
        {"prompt_tokens": 10, "cache_n": 6},
        (10, 6, 0, 20, 0),
        "0.000171",  # llama.cpp's timings.cache_n: 4 x 2 + 6 x 0.5 + 20 x 8
        id="llamacpp-cache-n",
    ),
    pytest.param(
        {"prompt_tokens": 10, "cached_tokens": 4, "cache_n": 6},
        (10, 4, 0, 20, 0),
        "0.000174",  # the usage block's cached_tokens wins: 6 x 2 + 4 x 0.5 + 20 x 8
        id="llamacpp-cached-tokens-over-cache-n",
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("options", "stored", "cost"), PIPELINE)
def test_the_gateway_stores_and_charges_the_canonical_usage(
    world, acme, fake_upstream, stream, options, stored, cost
):
    _cache_model(acme, fake_upstream, **options)
    response = _chat(world, stream=stream)
    assert response.status_code == 200
    [event] = wait_for_usage(1)
    assert _event_tokens(event) == (*stored, False)
    assert event.cost == Decimal(cost)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_responses_api_reports_the_canonical_usage(world, acme, fake_upstream, stream):
    _cache_model(acme, fake_upstream, prompt_tokens=10, cached_tokens=6, reasoning_tokens=3)
    body = {"model": "cache", "input": "Hi", "stream": stream}
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    response = httpx.post(f"{world.url}/v1/responses", headers=auth, json=body, timeout=10)
    assert response.status_code == 200
    if stream:
        events = [
            json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
        ]
        usage = events[-1]["response"]["usage"]
    else:
        usage = response.json()["usage"]
    assert usage == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 30,
    }
    [event] = wait_for_usage(1)
    assert event.cost == Decimal("0.000171")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_messages_api_reports_the_canonical_usage(world, acme, fake_upstream, stream):
    _cache_model(acme, fake_upstream, prompt_tokens=10, cached_tokens=4, cache_write_tokens=3)
    body = {"model": "cache", "max_tokens": 100, "messages": HI, "stream": stream}
    headers = {"x-api-key": world.alice_key}
    response = httpx.post(f"{world.url}/v1/messages", headers=headers, json=body, timeout=10)
    assert response.status_code == 200
    if stream:
        deltas = [
            json.loads(line[5:])
            for line in response.text.splitlines()
            if line.startswith("data:") and '"message_delta"' in line
        ]
        usage = deltas[-1]["usage"]
    else:
        usage = response.json()["usage"]
    assert usage == {
        "input_tokens": 3,
        "output_tokens": 20,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 3,
    }
    [event] = wait_for_usage(1)
    assert _event_tokens(event) == (10, 4, 3, 20, 0, False)
    assert event.cost == Decimal("0.000176")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_wallet_is_charged_exactly_the_cost(world, acme, alice, fake_upstream, stream):
    model = _cache_model(
        acme, fake_upstream, prompt_tokens=10, cached_tokens=4, cache_write_tokens=3
    )
    ModelLink.objects.filter(model=model).update(is_wallet_billed=True)
    model.save()  # signal the caches
    wallet = wallet_for(organisation=acme)
    wallet_topup(wallet=wallet, amount=Decimal("1"), reason="start", by=alice)
    assert _chat(world, stream=stream).status_code == 200
    [event] = wait_for_usage(1)
    charge = _wait_for_charge(event.request_id)
    assert -charge.amount == event.cost == Decimal("0.000176")
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("1") - Decimal("0.000176")


def _wait_for_charge(request_id: str, timeout: float = 5.0) -> LedgerEntry:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = LedgerEntry.objects.filter(kind=LedgerKind.USAGE, request_id=request_id).first()
        if entry is not None:
            return entry
        time.sleep(0.02)
    raise AssertionError("no usage charge")


# --- Admin -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_shows_the_cache_prices_and_token_columns(client, superuser, alice):
    from django.urls import reverse

    from tests.factories import AIModelFactory

    model = AIModelFactory(name="priced", cached_input_price_per_million=Decimal("0.3"))
    UsageEvent.objects.create(
        created_at="2026-11-20T12:00:00Z",
        request_id="req_admin",
        user=alice,
        model=model,
        route="chat.completions",
        status="ok",
        prompt_tokens=10,
        cache_read_tokens=6,
        cache_write_tokens=2,
        completion_tokens=5,
        reasoning_tokens=3,
    )
    client.force_login(superuser)
    form = client.get(reverse("admin:ai_aimodel_change", args=[model.pk])).content.decode()
    assert 'name="cached_input_price_per_million" value="0.300000"' in form
    assert 'name="cache_write_price_per_million"' in form
    listing = client.get(reverse("admin:ai_usageevent_changelist")).content.decode()
    for column in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
        assert f"column-{column}" in listing
