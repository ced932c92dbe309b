"""The gateway while Redis or the database is down: degraded answers, never a 500."""

import logging
import shutil
import time
from decimal import Decimal

import httpx
import pytest

from ai.models import ModelLink
from orgs.services import wallet_for, wallet_topup
from tests.ai.conftest import make_model, wait_for_usage
from tests.servers import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def _chat(world, model: str, key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key or world.alice_key}"},
        json={"model": model, "messages": HI, "max_tokens": 5},
        timeout=30,
    )


def _until(check, timeout: float = 30.0):
    """Poll ``check`` until it returns something truthy (recovery takes a retry interval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("the condition did not hold in time")


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
    _until(lambda: _chat(world, "limited").status_code == 200)
    assert _chat(world, "billed").status_code == 200
    assert any("Redis answers again" in r.getMessage() for r in caplog.records)
