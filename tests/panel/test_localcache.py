"""The per-process cache, with two instances standing for two processes."""

import pytest

from panel import localcache
from panel.localcache import LocalCache, bump_generation


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(localcache.time, "monotonic", clock)
    return clock


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


async def test_it_expires_entries_after_their_max_age(clock):
    cache, value = LocalCache(), {"v": 1}
    assert await cache.get("k", lambda: value["v"], max_age=5) == 1
    value["v"] = 2
    clock.now += 5
    assert await cache.get("k", lambda: value["v"], max_age=5) == 2
