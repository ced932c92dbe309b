"""The gateway on a Redis it reaches by rediss:// (TLS): admissions, counters and wallets."""

import shutil
import time
from decimal import Decimal

import httpx
import pytest
import redis

from ai.gateway.reservations import balance_key as redis_balance_key
from ai.models import ModelLink
from orgs.services import to_micro, wallet_for, wallet_topup
from tests.ai.conftest import clear_of_a_minute_turn, wait_for_usage
from tests.servers import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tls_redis(settings, tmp_path):
    """A redis-server of this test's own that speaks only TLS, as REDIS_URL."""
    if shutil.which("redis-server") is None:
        pytest.skip("issue 11: needs redis-server on PATH")
    server = RedisServer(tls_dir=tmp_path).start()
    settings.REDIS_URL = server.url
    yield server
    server.stop()


def _chat(world) -> int:
    response = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    return response.status_code


def test_a_limited_wallet_billed_link_is_admitted_through_redis_over_tls(
    world, acme, alice, tls_redis
):
    ModelLink.objects.filter(model=world.chat).update(requests_per_minute=3, is_wallet_billed=True)
    wallet = wallet_for(organisation=acme)
    wallet_topup(wallet=wallet, amount=Decimal("10"), reason="t", by=alice)
    world.chat.save()  # signal the caches
    clear_of_a_minute_turn()

    assert [_chat(world) for _ in range(4)] == [200, 200, 200, 429]

    events = wait_for_usage(3)
    client = redis.Redis.from_url(tls_redis.url)
    counters = [int(client.get(key)) for key in client.scan_iter("sb:lim:*:requests_per_minute:*")]
    assert counters and max(counters) == 3
    balance_key = redis_balance_key(wallet.id)
    deadline = time.monotonic() + 5
    while int(client.get(balance_key)) != to_micro(Decimal("10") - sum(e.cost for e in events)):
        assert time.monotonic() < deadline, "the wallet in Redis was never charged"
        time.sleep(0.05)
