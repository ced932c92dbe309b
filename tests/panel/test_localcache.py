"""The per-process cache, with two instances standing for two processes."""

import asyncio

import pytest

from panel import localcache, outage
from panel.errors import DependencyUnavailable
from panel.localcache import LocalCache, bump_generation


async def test_it_loads_once_and_serves_from_memory(clock):
    cache, calls = LocalCache(), []
    for _ in range(3):
        assert await cache.get("k", lambda: calls.append(1) or "v") == "v"
    assert len(calls) == 1


async def test_another_process_sees_a_change_within_the_check_interval(clock):
    web_1, web_2 = LocalCache(), LocalCache()
    value = {"key": "active"}
    assert await web_1.get("k", lambda: value["key"]) == "active"
    value["key"] = "revoked"
    await web_2.get("other", lambda: None)
    bump_generation()  # what a save in web_2 does
    assert await web_1.get("k", lambda: value["key"]) == "active"  # still inside the interval
    clock.now += localcache.CHECK_INTERVAL
    assert await web_1.get("k", lambda: value["key"]) == "revoked"


def _bump_in_another_process(settings) -> None:
    """bump_generation run by a process of its own on this database (as the agent would)."""
    import os
    import subprocess
    import sys

    name = settings.DATABASES["default"]["NAME"]
    env = {
        **os.environ,
        "DATA_DIR": str(settings.DATA_DIR),
        "DATABASE_URL": f"sqlite:///{name}" if str(name).startswith("/") else f"postgres:///{name}",
        "REDIS_URL": "",
    }
    code = "import django; django.setup(); from panel.localcache import bump_generation as b; b()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


async def test_without_redis_a_change_made_in_another_process_is_seen(clock, settings, tmp_path):
    settings.REDIS_URL = ""
    settings.DATA_DIR = tmp_path
    cache, value = LocalCache(), {"key": "active"}
    assert await cache.get("k", lambda: value["key"]) == "active"
    value["key"] = "revoked"

    _bump_in_another_process(settings)
    clock.now += localcache.CHECK_INTERVAL

    assert await cache.get("k", lambda: value["key"]) == "revoked"
    assert localcache.generation_path() in {str(path) for path in tmp_path.iterdir()}


async def test_it_expires_entries_after_their_max_age(clock):
    cache, value = LocalCache(), {"v": 1}
    assert await cache.get("k", lambda: value["v"], max_age=5) == 1
    value["v"] = 2
    clock.now += 5
    assert await cache.get("k", lambda: value["v"], max_age=5) == 2


# --- The database down ------------------------------------------------------------------


def _database_down():
    from django.db import OperationalError

    raise OperationalError("connection refused")


async def test_it_serves_a_stale_value_while_the_database_is_down(clock, settings):
    settings.GATEWAY_STALE_CACHE_SECONDS = 300
    cache = LocalCache()
    assert await cache.get("k", lambda: "v", max_age=5) == "v"
    clock.now += 200
    assert await cache.get("k", _database_down, max_age=5) == "v"
    assert outage.database.is_down
    # Down: the stale value is served without waiting for the database again.
    assert await cache.get("k", _database_down, max_age=5) == "v"


async def test_a_value_older_than_the_staleness_bound_is_never_served(clock, settings):
    settings.GATEWAY_STALE_CACHE_SECONDS = 300
    cache = LocalCache()
    await cache.get("k", lambda: "v", max_age=5)
    clock.now += 301
    with pytest.raises(DependencyUnavailable):
        await cache.get("k", _database_down, max_age=5)


async def test_a_value_never_loaded_is_a_503_while_the_database_is_down(clock):
    with pytest.raises(DependencyUnavailable) as raised:
        await LocalCache().get("cold", _database_down)
    assert raised.value.status_code == 503 and raised.value.headers["Retry-After"]


async def test_it_reloads_in_the_background_once_the_database_is_back(settings):
    settings.GATEWAY_OUTAGE_RETRY_SECONDS = 0.0
    cache, offset = LocalCache(), [0.0]
    cache.clock = lambda: 1000.0 + offset[0]
    await cache.get("k", lambda: "old", max_age=5)
    offset[0] += 10
    await cache.get("k", _database_down, max_age=5)
    # Still down as far as it knows: the stale value now, a reload in the background.
    assert await cache.get("k", lambda: "new", max_age=5) == "old"
    for _ in range(500):
        if not outage.database.is_down:
            break
        await asyncio.sleep(0.01)
    assert await cache.get("k", lambda: "newer", max_age=5) == "new"


async def test_a_query_error_is_not_mistaken_for_an_outage(clock):
    from django.db import ProgrammingError

    def broken():
        raise ProgrammingError("no such column")

    cache = LocalCache()
    await cache.get("k", lambda: "v", max_age=5)
    clock.now += 10
    with pytest.raises(ProgrammingError):
        await cache.get("k", broken, max_age=5)


# --- Bounds ----------------------------------------------------------------------------------


async def test_it_keeps_at_most_the_maximum_of_found_and_of_missing_entries(clock, settings):
    settings.GATEWAY_CACHE_MAX_ENTRIES = 10
    cache = LocalCache()
    await cache.get("real", lambda: "value")
    for i in range(1000):
        assert await cache.get(("unknown", i), lambda: None) is None
    assert len(cache) == 1 + 10
    # The flood of misses never pushed the found entry out.
    assert await cache.get("real", lambda: pytest.fail("reloaded")) == "value"
    for i in range(20):
        await cache.get(("found", i), lambda i=i: i)
    assert len(cache) == 10 + 10


async def test_a_miss_is_forgotten_sooner_than_a_hit(clock):
    cache, calls = LocalCache(), []
    await cache.get("k", lambda: calls.append(1))  # None: not found
    clock.now += localcache.NEGATIVE_MAX_AGE
    await cache.get("k", lambda: calls.append(1))
    assert len(calls) == 2


async def test_concurrent_misses_of_one_key_load_it_once(clock):
    cache, calls = LocalCache(), []

    def load():
        calls.append(1)
        return "v"

    await cache.get("other", lambda: None)  # the generation check, out of the way
    values = await asyncio.gather(*(cache.get("k", load) for _ in range(20)))
    assert values == ["v"] * 20 and len(calls) == 1
