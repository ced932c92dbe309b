"""Step 4: the order in which a model's upstreams are tried, and the circuit breaker.

Upstreams go by priority (lower first), weighted random within a priority.
Unhealthy upstreams and those whose breaker is open are tried last, only
when nothing else is left. An instance that is not running is not tried at
all (``ModelInfo.routable``); one with on-demand start is started once these
failed (``pipeline``, ``starts``), and resolve refuses a model left with
neither. After
BREAKER_THRESHOLD consecutive failures an upstream's breaker opens for
BREAKER_COOLDOWN seconds; a success closes it.
With Redis the state is shared by every process (hashes sb:breaker:fails and
sb:breaker:open), read at most once a second per process; while Redis is
unreachable each process keeps counting on its own.

The admin reads and closes the breakers through ``breakers_read``,
``breaker_state`` and ``breakers_close``: with Redis the shared state of every
replica; without, the breakers of the process serving the admin page, which in
the embedded topology (``make run``: one uvicorn process) is the gateway's too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

from django.conf import settings

from panel import outage
from panel import redis as sb_redis

from ..models import HealthStatus
from ..selectors import ModelInfo, UpstreamInfo
from .observability import BREAKER_OPEN, UPSTREAM_ERRORS

FAILS_KEY = "sb:breaker:fails"
OPEN_KEY = "sb:breaker:open"
SYNC_INTERVAL = 1.0


def _weighted_order(group: list[UpstreamInfo]) -> list[UpstreamInfo]:
    # Efraimidis-Spirakis: sorting by u ** (1 / w) draws without replacement by weight.
    if len(group) == 1:
        return group
    return sorted(group, key=lambda u: random.random() ** (1.0 / u.weight), reverse=True)


def candidates(model: ModelInfo) -> list[UpstreamInfo]:
    """Every enabled upstream of the model that can take requests, in the order to try them."""
    preferred: list[UpstreamInfo] = []
    last_resort: list[UpstreamInfo] = []
    for _, group in groupby(model.routable, key=lambda u: u.priority):
        for upstream in _weighted_order(list(group)):
            avoid = upstream.health_status == HealthStatus.UNHEALTHY or breaker.is_open(
                upstream.id, probed_ok_at=upstream.probed_ok_at
            )
            (last_resort if avoid else preferred).append(upstream)
    return preferred + last_resort


class Named(Protocol):
    """An upstream as the breaker names it: an Upstream row or an UpstreamInfo."""

    id: int
    name: str


class Breaker:
    """Consecutive-failure circuit breaker per upstream id."""

    def __init__(self) -> None:
        self.failures: dict[int, int] = {}
        self.open_until: dict[int, float] = {}
        self._synced_at = 0.0

    def is_open(self, upstream_id: int, probed_ok_at: float | None = None) -> bool:
        """Open and cooling; a health probe that succeeded since it opened closes it."""
        until = self.open_until.get(upstream_id)
        if until is None or until <= time.time():
            return False
        opened_at = until - settings.GATEWAY_BREAKER_COOLDOWN
        return probed_ok_at is None or probed_ok_at < opened_at

    async def sync(self) -> None:
        """Pull the shared open breakers from Redis, at most once a second."""
        now = time.monotonic()
        if not sb_redis.is_configured() or now - self._synced_at < SYNC_INTERVAL:
            return
        self._synced_at = now
        shared = await _shared("hgetall", OPEN_KEY)
        if shared is not None:
            self.open_until = {int(k): float(v) for k, v in shared.items()}

    async def record_failure(
        self, upstream_id: int, *, upstream_name: str = "", model_name: str = ""
    ) -> None:
        threshold = settings.GATEWAY_BREAKER_THRESHOLD
        count = None
        if sb_redis.is_configured():
            count = await _shared("hincrby", FAILS_KEY, upstream_id, 1)
        if count is None:
            count = self.failures.get(upstream_id, 0) + 1
        self.failures[upstream_id] = count
        UPSTREAM_ERRORS.labels(model_name, upstream_name).inc()
        if count >= threshold:
            until = time.time() + settings.GATEWAY_BREAKER_COOLDOWN
            self.open_until[upstream_id] = until
            BREAKER_OPEN.labels(upstream_name).set(1)
            if sb_redis.is_configured():
                await _shared("hset", OPEN_KEY, upstream_id, until)

    async def record_success(self, upstream_id: int, *, upstream_name: str = "") -> None:
        if upstream_id not in self.failures and upstream_id not in self.open_until:
            return
        BREAKER_OPEN.labels(upstream_name).set(0)
        self.failures.pop(upstream_id, None)
        self.open_until.pop(upstream_id, None)
        if sb_redis.is_configured():
            await _shared("hdel", FAILS_KEY, upstream_id)
            await _shared("hdel", OPEN_KEY, upstream_id)

    def snapshot(self) -> tuple[dict[int, float], dict[int, int]]:
        """Copies of this process's open-until times and failure counts, by upstream id.

        Safe from another thread (the admin's): copying a dict keyed by ints is one
        step under the GIL, so the gateway's loop never sees it half done.
        """
        return dict(self.open_until), dict(self.failures)

    def close(self, upstreams: Iterable[Named]) -> None:
        """Close the upstreams' breakers in this process (from any thread: each pop is one step)."""
        for upstream in upstreams:
            self.failures.pop(upstream.id, None)
            if self.open_until.pop(upstream.id, None) is not None:
                BREAKER_OPEN.labels(upstream.name).set(0)

    def reset(self) -> None:
        self.failures.clear()
        self.open_until.clear()
        self._synced_at = 0.0
        if sb_redis.is_configured():
            sb_redis.sync_client().delete(FAILS_KEY, OPEN_KEY)


async def _shared(command: str, *args):
    """A command on the shared breaker state; None while Redis is unreachable."""
    if not outage.redis.may_try():
        return None
    try:
        reply = await getattr(sb_redis.async_client(), command)(*args)
    except sb_redis.UNREACHABLE as exc:
        outage.redis.failed(exc)
        return None
    outage.redis.recovered()
    return reply


breaker = Breaker()

BREAKER_CLOSED = "closed"
BREAKER_HALF_OPEN = "half-open"
BREAKER_OPENED = "open"


def breaker_state(
    open_until: float | None, *, probed_ok_at: float | None = None, now: float | None = None
) -> str:
    """What the gateway makes of an upstream's shared breaker entry.

    Open while cooling (and no probe succeeded since it opened); half-open once
    the cooldown is over or a probe succeeded: requests go to it again, and as
    its failure count stays at the threshold, one more failure opens it again
    while one success closes it.
    """
    if open_until is None:
        return BREAKER_CLOSED
    now = time.time() if now is None else now
    opened_at = open_until - settings.GATEWAY_BREAKER_COOLDOWN
    if open_until > now and (probed_ok_at is None or probed_ok_at < opened_at):
        return BREAKER_OPENED
    return BREAKER_HALF_OPEN


def _shared_breakers() -> tuple[dict[int, float], dict[int, int]] | None:
    """The shared (Redis) open-until times and failure counts, by upstream id.

    None without Redis (each process keeps its own state) or while it is unreachable.
    """
    if not sb_redis.is_configured() or not outage.redis.may_try():
        return None
    try:
        pipe = sb_redis.sync_client().pipeline(transaction=False)
        opened, fails = pipe.hgetall(OPEN_KEY).hgetall(FAILS_KEY).execute()
    except sb_redis.UNREACHABLE as exc:
        outage.redis.failed(exc)
        return None
    outage.redis.recovered()
    return (
        {int(k): float(v) for k, v in opened.items()},
        {int(k): int(v) for k, v in fails.items()},
    )


# Where the breaker state the admin reads and closes lives.
SCOPE_PROCESS = "this process"
SCOPE_SHARED = "all replicas (Redis)"


@dataclass(frozen=True, slots=True)
class BreakerStates:
    """Open-until times and failure counts by upstream id, and whose they are (a SCOPE_*)."""

    scope: str
    open_until: dict[int, float]
    failures: dict[int, int]


def breakers_read() -> BreakerStates | None:
    """The breakers the admin shows: shared with Redis (None while it is unreachable),
    else those of this process."""
    if not sb_redis.is_configured():
        return BreakerStates(SCOPE_PROCESS, *breaker.snapshot())
    shared = _shared_breakers()
    return None if shared is None else BreakerStates(SCOPE_SHARED, *shared)


def breakers_close(upstreams: Iterable[Named]) -> str | None:
    """Close the upstreams' breakers in this process and, with Redis, for every replica.

    Returns the scope closed; None when Redis is configured but unreachable (then
    only this process's breakers are closed).
    """
    upstreams = list(upstreams)
    breaker.close(upstreams)
    if not sb_redis.is_configured():
        return SCOPE_PROCESS
    if not upstreams:
        return SCOPE_SHARED
    if not outage.redis.may_try():
        return None
    ids = [upstream.id for upstream in upstreams]
    try:
        pipe = sb_redis.sync_client().pipeline(transaction=False)
        pipe.hdel(OPEN_KEY, *ids).hdel(FAILS_KEY, *ids).execute()
    except sb_redis.UNREACHABLE as exc:
        outage.redis.failed(exc)
        return None
    outage.redis.recovered()
    return SCOPE_SHARED
