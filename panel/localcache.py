"""A per-process cache for the request path, invalidated across processes.

Lookups the gateway makes on every request (keys, models, links) are kept in
this process's memory, so a warm request makes no database query. Any change
to those rows bumps a shared generation (a counter in Redis when configured,
else a small file in DATA_DIR that every process of the host reads); each
process compares it at most once a second and drops everything on a change.
So a revoked key, a disabled link or a stopped instance (its agent is another
process) stops being used within about a second in every process.

The cache is bounded: at most GATEWAY_CACHE_MAX_ENTRIES found values and as
many not-found ones (a loader's ``None``, such as an unknown key, kept at most
NEGATIVE_MAX_AGE), least recently used dropped first. Each key is loaded by
one call at a time.

While the database is unreachable (``panel.outage.database``) an expired
value is served for up to GATEWAY_STALE_CACHE_SECONDS after it was loaded,
and reloaded in the background once per retry interval; a value never loaded,
or older than that, raises ``DependencyUnavailable`` (503). While Redis is
unreachable the generation is not checked: entries still expire by their age.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError

from panel import outage
from panel import redis as sb_redis
from panel.db import run_sync
from panel.errors import DependencyUnavailable

GENERATION_KEY = "sb:registry:generation"
CHECK_INTERVAL = 1.0
MAX_AGE = 60.0
NEGATIVE_MAX_AGE = 5.0
# A connection refused, lost or timed out; never a bug in a query.
DATABASE_ERRORS = (OperationalError, InterfaceError)

logger = logging.getLogger(__name__)


class _Unreachable(Exception):
    """The database could not be asked (down, or found down by a load queued earlier)."""


@dataclass(slots=True)
class _Entry:
    loaded_at: float
    fresh_until: float
    value: Any


class LocalCache:
    """Values keyed by any hashable, each loaded once until invalidated or its max age passes."""

    def __init__(self) -> None:
        self._found: OrderedDict[Any, _Entry] = OrderedDict()
        self._missing: OrderedDict[Any, _Entry] = OrderedDict()
        self._loading: dict[Any, asyncio.Task] = {}
        self._generation: Any = None
        self._checked_at = 0.0
        self.clock: Callable[[], float] = time.monotonic

    def __len__(self) -> int:
        return len(self._found) + len(self._missing)

    async def get(self, key, loader: Callable[..., Any], *args, max_age: float = MAX_AGE):
        """The cached value for ``key``; on a miss, ``loader(*args)`` runs in one thread hop."""
        now = self.clock()
        if now - self._checked_at >= CHECK_INTERVAL:
            await self._sync_generation(now)
        entry = self._lookup(key)
        if entry is not None:
            if entry.fresh_until > now:
                return entry.value
            if outage.database.is_down and self._is_servable(entry, now):
                self._start_load(key, loader, args, max_age)  # in the background
                return entry.value
        load = self._start_load(key, loader, args, max_age)
        try:
            if load is None:
                raise _Unreachable
            return await asyncio.shield(load)
        except _Unreachable:
            return self._stale_or_unavailable(key)

    async def sync_now(self) -> None:
        """Compare the shared generation now, not at the next second (after another
        process's change that this one must see at once, such as an instance it started)."""
        await self._sync_generation(self.clock())

    def forget(self, key) -> None:
        """Drop one entry, so that the next ``get`` loads it."""
        self._found.pop(key, None)
        self._missing.pop(key, None)

    def clear(self) -> None:
        self._found.clear()
        self._missing.clear()
        self._checked_at = 0.0

    def _lookup(self, key) -> _Entry | None:
        entry = self._found.get(key)
        if entry is not None:
            self._found.move_to_end(key)
            return entry
        entry = self._missing.get(key)
        if entry is not None:
            self._missing.move_to_end(key)
        return entry

    def _is_servable(self, entry: _Entry, now: float) -> bool:
        return now - entry.loaded_at <= settings.GATEWAY_STALE_CACHE_SECONDS

    def _stale_or_unavailable(self, key):
        entry = self._lookup(key)
        if entry is not None and self._is_servable(entry, self.clock()):
            return entry.value
        raise DependencyUnavailable("Switchboard cannot reach its database; retry shortly.")

    def _start_load(self, key, loader, args, max_age: float) -> asyncio.Task | None:
        """The load of ``key`` in flight on this loop, or a new one; None while the database is
        down and not due for another try."""
        loop = asyncio.get_running_loop()
        load = self._loading.get(key)
        if load is not None and not load.done() and load.get_loop() is loop:
            return load
        if not outage.database.may_try():
            return None
        load = self._loading[key] = loop.create_task(self._load(key, loader, args, max_age))
        load.add_done_callback(_retrieve_exception)
        return load

    async def _load(self, key, loader, args, max_age: float):
        try:
            value = await run_sync(_load_in_thread, loader, args, time.monotonic())
            self._store(key, value, self.clock(), max_age)
            return value
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]

    def _store(self, key, value, now: float, max_age: float) -> None:
        if value is None:
            table, other, max_age = self._missing, self._found, min(max_age, NEGATIVE_MAX_AGE)
        else:
            table, other = self._found, self._missing
        other.pop(key, None)
        table[key] = _Entry(loaded_at=now, fresh_until=now + max_age, value=value)
        table.move_to_end(key)
        while len(table) > settings.GATEWAY_CACHE_MAX_ENTRIES:
            table.popitem(last=False)

    async def _sync_generation(self, now: float) -> None:
        # Claim the check before awaiting, so concurrent requests do not all ask.
        self._checked_at = now
        try:
            generation = await _read_generation()
        except (*sb_redis.UNREACHABLE, OSError):
            # Logged by panel.outage (or below); entries still expire by their max age.
            return
        if generation != self._generation:
            self.clear()
            self._generation = generation
        self._checked_at = now


def _load_in_thread(loader, args, submitted_at: float):
    # Loads queue for the one sync thread: one queued behind a load that just
    # found the database down gives up at once instead of waiting its own timeout.
    if outage.database.failed_at > submitted_at:
        raise _Unreachable
    try:
        value = loader(*args)
    except DATABASE_ERRORS as exc:
        outage.database.failed(exc)
        raise _Unreachable from exc
    outage.database.recovered()
    return value


def _retrieve_exception(task: asyncio.Task) -> None:
    # A background reload's failure is handled (and logged) by the outage;
    # this keeps asyncio from reporting it as never retrieved.
    if not task.cancelled():
        task.exception()


async def _read_generation():
    if sb_redis.is_configured():
        return await sb_redis.connection().execute("GET", GENERATION_KEY)
    return _read_generation_file()


def generation_path() -> str:
    """The file holding the embedded generation: one per database, so the processes
    sharing a database share it (and a test database's servers do not see others)."""
    where = (settings.DATA_DIR, settings.DATABASES["default"]["NAME"])
    path = _generation_paths.get(where)
    if path is None:
        digest = hashlib.sha256(str(where[1]).encode()).hexdigest()[:16]
        path = _generation_paths[where] = os.path.join(where[0], f"cache-generation-{digest}")
    return path


_generation_paths: dict[tuple, str] = {}


def _read_generation_file() -> bytes | None:
    # Sixteen bytes the page cache holds, read at most once a second per process
    # without a thread hop: measured at 8-13 us a check on ext4 with both cores
    # busy (open() with its buffered file object costs twice that, a hop to a
    # thread about 200 us).
    try:
        descriptor = os.open(generation_path(), os.O_RDONLY)
    except FileNotFoundError:
        return None  # never bumped yet
    except OSError as exc:
        logger.warning("The cache generation file could not be read: %s", exc)
        raise
    try:
        return os.read(descriptor, 64)
    finally:
        os.close(descriptor)


def _write_generation_file() -> None:
    # A fresh random token, written aside and renamed over: a reader sees the old
    # token or the new one, and any two bumps, from any processes, differ.
    path = generation_path()
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(temporary, "wb") as file:
        file.write(os.urandom(8).hex().encode())
    os.replace(temporary, path)


def bump_generation() -> None:
    """Tell every process that cached registry rows changed (call after commit)."""
    registry_cache.clear()
    if sb_redis.is_configured():
        try:
            sb_redis.sync_client().incr(GENERATION_KEY)
        except sb_redis.UNREACHABLE as exc:
            # Other processes see the change when their entries expire (MAX_AGE).
            outage.redis.failed(exc)
        return
    try:
        _write_generation_file()
    except OSError as exc:
        # Other processes see the change when their entries expire (MAX_AGE).
        logger.warning("The cache generation file could not be written: %s", exc)


registry_cache = LocalCache()
