"""A per-process cache for the request path, invalidated across processes.

Lookups the gateway makes on every request (keys, models, links) are kept in
this process's memory, so a warm request makes no database query. Any change
to those rows bumps a shared generation number (Redis when configured, else
the Django cache); each process compares it at most once a second and drops
everything on a change. So a revoked key or a disabled link stops working
within about a second in every process.
"""

import itertools
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import cache as django_cache

from panel import redis as sb_redis
from panel.db import run_sync

GENERATION_KEY = "sb:registry:generation"
CHECK_INTERVAL = 1.0
MAX_AGE = 60.0

_local_counter = itertools.count(1)


class LocalCache:
    """Values keyed by any hashable, each loaded once until invalidated or MAX_AGE passes."""

    def __init__(self) -> None:
        self._data: dict[Any, tuple[float, Any]] = {}
        self._generation: Any = None
        self._checked_at = 0.0

    async def get(self, key, loader: Callable[..., Any], *args, max_age: float = MAX_AGE):
        """The cached value for ``key``; on a miss, ``loader(*args)`` runs in one thread hop."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL:
            await self._sync_generation(now)
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await run_sync(loader, *args)
        self._data[key] = (now + max_age, value)
        return value

    def clear(self) -> None:
        self._data.clear()
        self._checked_at = 0.0

    async def _sync_generation(self, now: float) -> None:
        # Claim the check before awaiting, so concurrent requests do not all ask.
        self._checked_at = now
        generation = await _read_generation()
        if generation != self._generation:
            self._data.clear()
            self._generation = generation
        self._checked_at = now


async def _read_generation():
    if sb_redis.is_configured():
        from panel.redis_pipe import connection

        return await connection().execute("GET", GENERATION_KEY)
    return django_cache.get(GENERATION_KEY)


def bump_generation() -> None:
    """Tell every process that cached registry rows changed (call after commit)."""
    registry_cache.clear()
    if sb_redis.is_configured():
        sb_redis.sync_client().incr(GENERATION_KEY)
    else:
        django_cache.set(GENERATION_KEY, next(_local_counter), timeout=None)


registry_cache = LocalCache()
