"""The soak's Django side, run in its own process on the soak's database (not through the proxy).

``python -m tests.soak.world seed FAKE_URL``: the models, links, wallet and keys the
traffic uses, printed as JSON. ``python -m tests.soak.world check``: once the topology
is quiet, rolls usage up and prints as JSON what the invariants are computed from:
events per request id, wallets against their ledgers, the limited links' use per
window, rollups against raw events, and what is still held or journalled.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from datetime import timedelta
from decimal import Decimal

# Every request asks for this many tokens at most: a reservation's token bound.
MAX_TOKENS = 20
# The limited links' limits (per minute), low enough that the traffic meets them: the
# first link's tokens run out before its requests, the second has a request limit alone.
LIMITED_REQUESTS_PER_MINUTE = 40
LIMITED_TOKENS_PER_MINUTE = 900
COUNTED_REQUESTS_PER_MINUTE = 30
# The billed link's wallet: enough for a few dozen requests at these prices.
WALLET_BALANCE = Decimal("2")
INPUT_PRICE, OUTPUT_PRICE = Decimal("1000"), Decimal("2000")  # credits per million tokens
PLAIN_KEYS = 3


def seed(fake_url: str) -> dict:
    """Models on healthy and failing upstreams, plain, limited and billed links, keys."""
    from accounts.models import User
    from accounts.services import apikey_create
    from ai.models import AIModel, ModelLink, Upstream
    from orgs.services import wallet_for, wallet_topup

    healthy, failing = f"{fake_url}/v1", f"{fake_url}/f/status=500/v1"
    models = {
        # name: its upstreams in priority order
        "soak-chat": [healthy],
        "soak-failover": [f"{fake_url}/f/status=503/v1", healthy],
        "soak-broken": [failing],
    }
    for name, urls in models.items():
        model = AIModel.objects.create(
            name=name,
            config={"max_output_tokens": 512},
            input_price_per_million=INPUT_PRICE,
            output_price_per_million=OUTPUT_PRICE,
        )
        for priority, url in enumerate(urls):
            Upstream.objects.create(
                model=model,
                name=f"{name}-{priority}",
                base_url=url,
                priority=priority,
                provider_model_id="fake-chat",
            )
    plain, limited, counted, billed = (
        User.objects.create(username=f"soak-{name}")
        for name in ("plain", "limited", "counted", "billed")
    )
    for name in models:
        ModelLink.objects.create(model=AIModel.objects.get(name=name), user=plain)
    chat = AIModel.objects.get(name="soak-chat")
    link = ModelLink.objects.create(
        model=chat,
        user=limited,
        requests_per_minute=LIMITED_REQUESTS_PER_MINUTE,
        tokens_per_minute=LIMITED_TOKENS_PER_MINUTE,
    )
    counted_link = ModelLink.objects.create(
        model=chat, user=counted, requests_per_minute=COUNTED_REQUESTS_PER_MINUTE
    )
    ModelLink.objects.create(model=chat, user=billed, is_wallet_billed=True)
    wallet_topup(wallet=wallet_for(user=billed), amount=WALLET_BALANCE, reason="soak")
    return {
        "plain_keys": [apikey_create(user=plain, name=f"soak-{i}")[1] for i in range(PLAIN_KEYS)],
        "limited_key": apikey_create(user=limited, name="soak-limited")[1],
        "counted_key": apikey_create(user=counted, name="soak-counted")[1],
        "billed_key": apikey_create(user=billed, name="soak-billed")[1],
        "limited_links": {"limited": link.pk, "counted": counted_link.pk},
    }


def check(limited_links: dict[str, int]) -> dict:
    """Roll usage up, then everything the invariants compare."""
    from ai.models import UsageEvent
    from ai.services import usage_rollup

    usage_rollup()
    events: dict[str, list] = {}
    for request_id, status in UsageEvent.objects.values_list("request_id", "status"):
        entry = events.setdefault(request_id, [0, status])
        entry[0] += 1
    return {
        "events": events,
        "wallets": _wallets(),
        "limits": {name: _limits(link_id) for name, link_id in limited_links.items()},
        "rollups": _rollups(),
        "held": _held(),
    }


def _wallets() -> list[dict]:
    from django.db.models import Sum

    from orgs.models import Wallet

    return [
        {
            "id": wallet.pk,
            "balance": str(wallet.balance),
            "ledger": str(wallet.entries.aggregate(total=Sum("amount"))["total"] or 0),
            "lowest": str(_lowest_balance(wallet)),
            "held": str(wallet.held),
        }
        for wallet in Wallet.objects.all()
    ]


def _lowest_balance(wallet) -> Decimal:
    """The lowest the balance ever was after its first entry, replaying the ledger in order."""
    balance, lowest = Decimal(0), None
    for amount in wallet.entries.order_by("id").values_list("amount", flat=True):
        balance += amount
        lowest = balance if lowest is None else min(lowest, balance)
    return lowest or Decimal(0)


def _limits(link_id: int) -> dict:
    """A link's requests and tokens per minute of admission, and their bounds (None: no limit)."""
    from ai.models import ModelLink, UsageEvent

    link = ModelLink.objects.get(pk=link_id)
    requests, tokens = Counter(), Counter()
    largest_prompt = 0
    rows = UsageEvent.objects.filter(link_id=link_id).values_list(
        "created_at", "latency_ms", "prompt_tokens", "completion_tokens"
    )
    for created_at, latency_ms, prompt, completion in rows:
        # An event is written when its request ends; its window is the admission's.
        minute = (created_at - timedelta(milliseconds=latency_ms)).replace(second=0, microsecond=0)
        requests[minute.isoformat()] += 1
        tokens[minute.isoformat()] += prompt + completion
        largest_prompt = max(largest_prompt, prompt)
    # One reservation more: a request, or the tokens one request may reserve.
    return {
        "requests": dict(requests),
        "tokens": dict(tokens),
        "requests_bound": link.requests_per_minute and link.requests_per_minute + 1,
        "tokens_bound": link.tokens_per_minute
        and link.tokens_per_minute + largest_prompt + MAX_TOKENS,
    }


def _rollups() -> dict:
    from django.db.models import Count, Q, Sum

    from ai.models import RollupPeriod, UsageEvent, UsageRollup, UsageStatus
    from ai.services.usage import SUMS, rollup_totals

    raw = UsageEvent.objects.aggregate(
        requests=Count("id"),
        errors=Count("id", filter=~Q(status=UsageStatus.OK)),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        cost=Sum("cost"),
    )
    names = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost")
    result = {"raw": {name: str(raw[name] or 0) for name in names}}
    for period in (RollupPeriod.HOUR, RollupPeriod.DAY):
        totals = rollup_totals(UsageRollup.objects.filter(period=period))
        result[period] = {name: str(totals.get(name, 0)) for name in names if name in SUMS}
    return result


def _held() -> dict:
    """What is still reserved once everything settled: wallet holds, journals, counters."""
    from django.conf import settings

    from ai.models import InFlightAdmission

    held: dict = {"journal_rows": InFlightAdmission.objects.count()}
    if settings.REDIS_URL:
        from panel import redis as sb_redis

        client = sb_redis.sync_client()
        holds = defaultdict(int)
        for key in client.scan_iter("sb:wallet:*:held"):
            holds[key.decode()] = int(client.get(key) or 0)
        held["redis_wallet_holds"] = dict(holds)
        held["redis_journal_entries"] = sum(
            client.hlen(key) for key in client.scan_iter("sb:gw:inflight:*")
        )
    return held


def main() -> None:
    import django

    django.setup()
    command, argument = sys.argv[1:3]
    result = seed(argument) if command == "seed" else check(json.loads(argument))
    json.dump(result, sys.stdout, default=str)


if __name__ == "__main__":
    main()
