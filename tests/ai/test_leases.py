"""Leases: a busy process admits from reservations taken several at a time, exactly."""

import asyncio
import os
import time
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from ai.gateway import admission, ledger
from ai.models import ModelLink, UsageEvent
from orgs.services import to_micro, wallet_for, wallet_topup
from tests.ai.conftest import clear_of_a_minute_turn, wait_for_usage
from tests.servers import LOCAL_REDIS

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]
URL = os.environ.get("REDIS_URL") or LOCAL_REDIS


@pytest.fixture
def on_redis(settings):
    """Limits in Redis; admission script calls counted; leases given back after 0.2 s."""
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("issue 4: needs a Redis server on 127.0.0.1:6379")
    settings.REDIS_URL = URL
    for pattern in ("sb:lim:*", "sb:wallet:*"):
        keys = list(client.scan_iter(pattern))
        if keys:
            client.delete(*keys)
    settings.GATEWAY_LEASE_SECONDS = 0.2
    return client, AdmissionCalls()


class AdmissionCalls:
    """Admission script calls to Redis since it was made, from the gateway's own metric."""

    def __init__(self) -> None:
        self.start = self._total()

    @staticmethod
    def _total() -> float:
        return REGISTRY.get_sample_value("switchboard_limit_admission_calls_total") or 0

    def __len__(self) -> int:
        return int(self._total() - self.start)


def _limit(world, **fields):
    ModelLink.objects.filter(model=world.chat).update(**fields)
    world.chat.save()  # signal the caches


async def _waves(world, waves: int, size: int) -> list[int]:
    statuses = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(waves):
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{world.url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {world.alice_key}"},
                        json={"model": "acme-chat", "messages": HI, "max_tokens": 20},
                    )
                    for _ in range(size)
                )
            )
            statuses += [r.status_code for r in responses]
    return statuses


def _total(client, pattern: str) -> int:
    return sum(int(client.get(key)) for key in client.scan_iter(pattern))


def _settled(client, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "leases were not given back"
        time.sleep(0.05)


def test_a_busy_link_is_admitted_from_leases_and_its_counters_end_exact(world, acme, on_redis):
    client, calls = on_redis
    wallet = wallet_for(organisation=acme)
    wallet_topup(wallet=wallet, amount=Decimal("1000"), reason="test")
    _limit(world, requests_per_minute=10**6, tokens_per_day=10**9, is_wallet_billed=True)

    statuses = asyncio.run(_waves(world, waves=10, size=20))

    assert statuses == [200] * 200
    assert len(calls) < 100  # most admissions came out of a lease, not a Redis call
    events = wait_for_usage(200)
    used = sum(e.prompt_tokens + e.completion_tokens for e in events)
    wallet.refresh_from_db()
    balance_key, held_key = f"sb:wallet:{wallet.id}:balance", f"sb:wallet:{wallet.id}:held"
    # Once the unspent leases are given back, Redis holds exactly what was used.
    _settled(client, lambda: _total(client, "sb:lim:*:requests_per_minute:*") == 200)
    _settled(client, lambda: int(client.get(held_key) or 0) == 0)
    assert _total(client, "sb:lim:*:tokens_per_day:*") == used
    wallet.refresh_from_db()
    assert int(client.get(balance_key)) == to_micro(wallet.balance)
    assert wallet.balance == Decimal("1000") - sum(e.cost for e in events)


def test_leases_never_admit_past_a_limit(world, on_redis):
    client, calls = on_redis
    _limit(world, requests_per_minute=100)
    clear_of_a_minute_turn(10)

    statuses = asyncio.run(_waves(world, waves=10, size=16))

    assert statuses.count(200) == 100
    assert statuses.count(429) == 60
    assert len(calls) < 160  # fewer calls than requests: leases were used, shrinking near the limit
    wait_for_usage(100)
    _settled(client, lambda: _total(client, "sb:lim:*:requests_per_minute:*") == 100)


def test_a_request_cancelled_while_admitted_gives_its_reservation_back(world, alice, on_redis):
    from accounts.authentication import Identity
    from accounts.models import hash_key
    from ai.gateway.resolve import CHAT, resolve
    from ai.selectors import key_info_get

    client, _ = on_redis
    _limit(world, requests_per_minute=5)

    async def admitting():
        key = await key_info_get(hash_key(world.alice_key))
        resolution = await resolve(
            identity=Identity(user_id=key.user_id, key=key), kinds=CHAT, model_name="acme-chat"
        )
        return admission.admit(
            resolution=resolution,
            body={"messages": HI},
            route_name="chat.completions",
            event={"request_id": "req_admitting"},
        )

    asyncio.run(_cancelled_while_redis_admits(admitting))

    assert _total(client, "sb:lim:*:requests_per_minute:*") == 0
    assert UsageEvent.objects.count() == 0


def test_a_request_cancelled_during_a_wallet_admission_returns_its_hold_and_leaves_one_event(
    world, acme, alice, on_redis
):
    from accounts.authentication import Identity
    from accounts.models import hash_key
    from ai.gateway import pipeline
    from ai.selectors import key_info_get

    client, _ = on_redis
    # Billed from a wallet, with no limit counters: the hold is all it reserves.
    ModelLink.objects.filter(model=world.chat).update(is_wallet_billed=True)
    wallet = wallet_for(organisation=acme)
    wallet_topup(wallet=wallet, amount=Decimal("10"), reason="test")
    world.chat.save()

    async def preparing():
        key = await key_info_get(hash_key(world.alice_key))
        return pipeline.prepare(
            identity=Identity(user_id=key.user_id, key=key),
            route=pipeline.CHAT_ROUTE,
            body={"model": "acme-chat", "messages": HI},
            request_id="req_cancelled",
        )

    asyncio.run(_cancelled_while_redis_admits(preparing))

    assert int(client.get(f"sb:wallet:{wallet.pk}:held") or 0) == 0
    events = list(UsageEvent.objects.all())
    assert [(e.request_id, e.status) for e in events] == [("req_cancelled", "client_cancelled")]
    assert events[0].cost == 0


async def _cancelled_while_redis_admits(make_call) -> None:
    """Start the coroutine ``make_call()`` gives, cancel it while its admission script is
    held up in a stalled proxy to Redis, then let the script through and flush what the
    cancellation left."""
    from django.conf import settings
    from django.test import override_settings

    from tests.servers import TcpProxy

    direct = urlsplit(settings.REDIS_URL)
    proxy = TcpProxy(direct.hostname, direct.port or 6379).start()
    call = await make_call()
    # override_settings, not an assignment: it tells the request path's settings cache
    # (panel.conf.hot) that REDIS_URL changed.
    proxied = direct._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    try:
        with override_settings(REDIS_URL=proxied):
            proxy.stall()
            task = asyncio.ensure_future(call)
            await asyncio.sleep(0.05)
            task.cancel()
            proxy.resume()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            await ledger.flush()
    finally:
        proxy.stop()
