"""The gateway while Redis or the database is down: degraded answers, never a 500."""

import asyncio
import logging
import shutil
import time
from decimal import Decimal

import httpx
import pytest
from django.db import connection

from ai.gateway import ledger
from ai.models import ModelLink
from orgs.services import wallet_for, wallet_topup
from panel.db import run_sync
from panel.localcache import registry_cache
from tests.ai.conftest import make_model, wait_for_usage
from tests.servers import RedisServer, TcpProxy, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def _chat(world, model: str, key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key or world.alice_key}"},
        json={"model": model, "messages": HI, "max_tokens": 5},
        timeout=30,
    )


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == error["code"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) > 0


# --- Redis -----------------------------------------------------------------------------


@pytest.fixture
def own_redis(settings):
    """A redis-server of this test's own (never the shared one), as REDIS_URL."""
    if shutil.which("redis-server") is None:
        pytest.skip("issue 11: needs redis-server on PATH")
    server = RedisServer().start()
    settings.REDIS_URL = server.url
    settings.REDIS_TIMEOUT = 0.5
    yield server
    server.stop()


@pytest.fixture
def redis_world(world, own_redis, acme, alice, fake_upstream):
    """acme-chat unlimited; 'limited' with a rate limit; 'billed' from acme's wallet."""
    limited = make_model("limited", owner=acme, base_urls=[fake_upstream.base_url()])
    billed = make_model("billed", owner=acme, base_urls=[fake_upstream.base_url()])
    ModelLink.objects.filter(model=limited).update(requests_per_minute=1000)
    ModelLink.objects.filter(model=billed).update(is_wallet_billed=True)
    wallet_topup(wallet=wallet_for(organisation=acme), amount=Decimal("10"), reason="t", by=alice)
    limited.save()  # signal the caches
    return world


@pytest.mark.parametrize("failure", ["killed", "hung"])
def test_limited_links_answer_503_and_unlimited_ones_work_while_redis_is_down(
    redis_world, own_redis, failure, caplog
):
    world = redis_world
    # One request each: a lease starts at one request, so nothing is held locally.
    for model in ("acme-chat", "limited", "billed"):
        assert _chat(world, model).status_code == 200
    wait_for_usage(3)
    # Their settlements too (a loaded machine may still hold one when Redis goes).
    wait_for(ledger.is_idle, 10, "the ledger to settle")
    caplog.set_level(logging.INFO)
    caplog.clear()
    own_redis.kill() if failure == "killed" else own_redis.hang()

    during = {
        model: [_chat(world, model) for _ in range(10)]
        for model in ("acme-chat", "limited", "billed")
    }

    assert [r.status_code for r in during["acme-chat"]] == [200] * 10
    for response in during["limited"] + during["billed"]:
        _assert_unavailable(response)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in problems] == ["panel.outage"], [r.getMessage() for r in problems]
    assert "Redis is unreachable" in problems[0].getMessage()

    own_redis.start() if failure == "killed" else own_redis.resume()
    wait_for(lambda: _chat(world, "limited").status_code == 200, 30, "Redis to be back")
    assert _chat(world, "billed").status_code == 200
    assert any("Redis answers again" in r.getMessage() for r in caplog.records)


# --- The database ------------------------------------------------------------------------


def _close_gateway_connection() -> None:
    connection.close()


@pytest.fixture
def database_behind_proxy(transactional_db):
    """The gateway's database connection goes through a proxy this test can cut."""
    if connection.vendor != "postgresql":
        pytest.skip("issue 11: cutting the database needs PostgreSQL (DATABASE_URL)")
    # Every thread's connection is made from this one dict; the test's own
    # connection is already open and stays direct.
    shared = connection.settings_dict
    saved = shared["HOST"], shared["PORT"]
    proxy = TcpProxy(saved[0] or "127.0.0.1", int(saved[1] or 5432)).start()
    shared["HOST"], shared["PORT"] = "127.0.0.1", proxy.port
    # The gateway loads through the one sync thread run_sync uses: reconnect it via the proxy.
    asyncio.run(run_sync(_close_gateway_connection))
    yield proxy
    proxy.restore()
    shared["HOST"], shared["PORT"] = saved
    asyncio.run(run_sync(_close_gateway_connection))
    proxy.stop()


def test_warm_keys_are_served_from_cache_and_cold_ones_get_503_while_the_database_is_down(
    world, database_behind_proxy, monkeypatch
):
    assert _chat(world, "acme-chat").status_code == 200
    wait_for_usage(1)
    # Every cached entry is now past its max age, well within the staleness bound.
    monkeypatch.setattr(registry_cache, "clock", lambda: time.monotonic() + 120)
    database_behind_proxy.cut()

    warm = [_chat(world, "acme-chat") for _ in range(5)]
    models = httpx.get(
        f"{world.url}/v1/models", headers={"Authorization": f"Bearer {world.alice_key}"}
    )
    cold = [_chat(world, "acme-chat", key=world.bob_key) for _ in range(3)]

    assert [r.status_code for r in warm] == [200] * 5
    assert models.status_code == 200 and "acme-chat" in models.text
    for response in cold:
        _assert_unavailable(response)
    database_behind_proxy.restore()
    wait_for(
        lambda: _chat(world, "acme-chat", key=world.bob_key).status_code == 200,
        30,
        "the database to be back",
    )
