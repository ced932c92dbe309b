"""Which instances this process has requests on, written for the agent's scheduler.

The gateway marks an instance's upstream in use for the whole life of a request
(``begin``/``end``: a stream until it ends or its client leaves). A background
task of this process writes, every INSTANCE_ACTIVITY_INTERVAL seconds,
``Instance.last_request_at`` (now) and ``last_request_priority`` (the highest link
priority among those requests) of every instance that had a request in flight or
begun since the last write: one ``update()`` per priority, in one thread hop, never
on the request path. The agent takes an instance written within about twice the
interval as busy: it neither idle-stops nor evicts it. ``update()`` sends no signal
and the generation is not bumped: the gateway does not read these fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict

from django.conf import settings
from django.utils import timezone

from panel import logs
from panel.db import run_sync
from panel.localcache import DATABASE_ERRORS

logger = logging.getLogger(__name__)
WARN_INTERVAL = 30.0

_in_flight: dict[int, Counter] = {}  # instance id -> {priority: requests}
_begun: dict[int, int] = {}  # since the last write: instance id -> highest priority
_writer: asyncio.Task | None = None
_warned_at = -WARN_INTERVAL


def begin(instance_id: int, priority: int) -> None:
    """A request starts using the instance (for the scheduler: it is busy)."""
    _in_flight.setdefault(instance_id, Counter())[priority] += 1
    if priority >= _begun.get(instance_id, -1):
        _begun[instance_id] = priority
    _ensure_writer()


def end(instance_id: int, priority: int) -> None:
    """The request that ``begin`` counted is over."""
    counts = _in_flight.get(instance_id)
    if counts is None or counts[priority] <= 0:
        return
    counts[priority] -= 1
    if counts[priority] == 0:
        del counts[priority]
    if not counts:
        del _in_flight[instance_id]


def in_flight(instance_id: int) -> int:
    """Requests of this process on the instance now."""
    return sum(_in_flight.get(instance_id, Counter()).values())


def _take() -> dict[int, int]:
    """Every instance to write now, with its priority; what was begun is forgotten."""
    due = dict(_begun)
    _begun.clear()
    for instance_id, counts in _in_flight.items():
        due[instance_id] = max(due.get(instance_id, 0), *counts)
    return due


def _write(due: dict[int, int]) -> None:
    from ..models import Instance

    now = timezone.now()
    by_priority: dict[int, list[int]] = defaultdict(list)
    for instance_id, priority in due.items():
        by_priority[priority].append(instance_id)
    for priority, ids in by_priority.items():
        Instance.objects.filter(pk__in=ids).update(
            last_request_at=now, last_request_priority=priority
        )


async def flush() -> None:
    """Write what is due now; kept for the next turn while the database is away."""
    global _warned_at
    due = _take()
    if not due:
        return
    try:
        await run_sync(_write, due)
    except DATABASE_ERRORS:
        for instance_id, priority in due.items():
            _begun[instance_id] = max(priority, _begun.get(instance_id, 0))
        if time.monotonic() - _warned_at >= WARN_INTERVAL:
            _warned_at = time.monotonic()
            logger.warning("Instance activity could not be written; will retry", exc_info=True)


async def _write_every_interval() -> None:
    while _in_flight or _begun:
        await asyncio.sleep(settings.INSTANCE_ACTIVITY_INTERVAL)
        await flush()


def _ensure_writer() -> None:
    global _writer
    loop = asyncio.get_running_loop()
    if _writer is None or _writer.done() or _writer.get_loop() is not loop:
        _writer = loop.create_task(_write_every_interval(), context=logs.outside_requests())


async def shutdown() -> None:
    """Stop the writer and write what is due (ASGI lifespan shutdown)."""
    writer = _writer
    if writer is not None and not writer.done() and writer.get_loop() is asyncio.get_running_loop():
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    await flush()


def reset() -> None:
    """Forget every count (tests start afresh)."""
    _in_flight.clear()
    _begun.clear()
