"""The write buffer: usage events, settlements and wallet charges, flushed in batches.

Owns what finished requests left to write. Rows are appended in process and
written by a background task (one thread hop per batch, never before the
first byte); ``flush()`` writes what is pending, ``shutdown()`` (ASGI lifespan)
and, last, interpreter exit write the rest.

What the buffer guarantees: a batch the database cannot take (it is down) is
kept and retried, in order; a row the database refuses (an integrity or data
error) is written on its own, so it never holds up the others, and logged if
it still fails. Events reach the database before their Redis settlement, so a
crash between the two leaves a journal entry (``journal``) that the reconciler
settles from the written event. With Redis, counters, holds and the copies of
wallet balances are changed by one script (``SETTLE_LUA``), which top-ups use
too; without Redis, in the flush transaction under the database's locks.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction

from orgs.services import credits
from panel import logs
from panel import redis as sb_redis
from panel.db import insert_many, run_sync
from panel.redis import Script

from ..models import UsageEvent
from . import journal
from .reservations import Settlement, balance_key, counter_deltas

logger = logging.getLogger(__name__)
WARN_INTERVAL = 30.0

# Adds ARGV[i + 1] to KEYS[i] when that key still exists (an expired window stays
# gone, a balance not loaded yet is loaded whole later), for the first ARGV[1] keys;
# then drops the remaining ARGV (request ids) from the in-flight journal KEYS[n + 1],
# in the same atomic step. A counter or a hold never goes below zero (a hold that
# faded and was taken again, say); a wallet balance may, and must match the ledger.
SETTLE_LUA = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if ARGV[i + 1] ~= '0' and redis.call('EXISTS', KEYS[i]) == 1 then
    local value = redis.call('INCRBY', KEYS[i], ARGV[i + 1])
    if value < 0 and string.sub(KEYS[i], -8) ~= ':balance' then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
if #ARGV > n + 1 then redis.call('HDEL', KEYS[n + 1], unpack(ARGV, n + 2)) end
return 1
"""


class UsageRow(NamedTuple):
    """One UsageEvent to insert (a plain tuple: no model instance on the request path)."""

    created_at: datetime
    request_id: str
    user_id: int
    organisation_id: int | None
    api_key_id: int | None
    link_id: int
    model_id: int
    model_name: str
    upstream_id: int | None
    route: str
    is_stream: bool
    status: str
    http_status: int | None
    prompt_tokens: int
    completion_tokens: int
    images: int
    is_estimated: bool
    cost: Decimal
    latency_ms: int
    ttft_ms: int | None
    attempts: int
    error: str
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    is_cache_hit: bool = False


class Batch(NamedTuple):
    """What one flush writes."""

    events: list[UsageRow]
    settlements: list[Settlement]  # counter deltas, wallet holds and charges
    charges: list[tuple[int, Decimal, str]]  # (wallet id, cost, request id): ledger entries
    done: list[str]  # request ids whose journal entries go with their events


_pending = Batch([], [], [], [])
_flusher: asyncio.Task | None = None
_warned_at: dict[str, float] = {}


def usage_queue(row: UsageRow, settlement: Settlement | None, *, is_journaled: bool) -> None:
    """Queue one request's event, the settlement of its reservation and its charge."""
    _pending.events.append(row)
    if is_journaled:
        _pending.done.append(row.request_id)
    if settlement is not None:
        if settlement.charge:
            wallet_id = settlement.admission.wallet_id
            _pending.charges.append((wallet_id, credits(settlement.charge), row.request_id))
        # Settled in batches with the usage flush: one Redis call or one transaction
        # per interval. Until then the reservation stands, which errs on the safe side.
        _pending.settlements.append(settlement)
    _ensure_flusher()


def settlement_queue(settlement: Settlement, *, done: list[str] = ()) -> None:
    """Queue a settlement that has no usage event (a lease given back, a cancelled admission).

    ``done`` names the journal entries it settles (a lease's).
    """
    _pending.settlements.append(settlement)
    _pending.done.extend(done)
    _ensure_flusher()


def has_pending() -> bool:
    return any(_pending)


def is_idle() -> bool:
    """No flush running and nothing pending that one would write (tests wait for this).

    What a flusher left on a closed event loop waits for the next loop (or exit).
    """
    if _flusher is not None and _flusher.get_loop().is_closed():
        return True
    return not has_pending() and (_flusher is None or _flusher.done())


def reset() -> None:
    """Drop everything pending (tests start afresh)."""
    for pending in _pending:
        pending.clear()


def _ensure_flusher() -> None:
    global _flusher
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush_now()
        return
    if _flusher is None or _flusher.done() or _flusher.get_loop() is not loop:
        _flusher = loop.create_task(_flush_soon(), context=logs.outside_requests())


async def _flush_soon() -> None:
    # Records queued while a batch is being written are picked up by the next turn;
    # a batch that could not be written waits a little longer before the next try.
    delay = settings.GATEWAY_USAGE_FLUSH_INTERVAL
    while has_pending():
        await asyncio.sleep(delay)
        written = await flush()
        delay = settings.GATEWAY_USAGE_FLUSH_INTERVAL if written else min(max(delay, 0.5) * 2, 5)


def _take() -> tuple[Batch, Batch | None]:
    """Everything pending: the database's part, and Redis's (settled after it) if configured."""
    batch = Batch(*(pending[:] for pending in _pending))
    for pending, taken in zip(_pending, batch, strict=True):
        del pending[: len(taken)]
    if not sb_redis.is_configured():
        return batch, None
    return Batch(batch.events, [], batch.charges, []), Batch([], batch.settlements, [], batch.done)


def _requeue(batch: Batch) -> None:
    for pending, taken in zip(_pending, batch, strict=True):
        pending[:0] = taken


def _warn(what: str, message: str, *args) -> None:
    """Log an outage once per WARN_INTERVAL, not once per batch."""
    now = time.monotonic()
    if now - _warned_at.get(what, -WARN_INTERVAL) >= WARN_INTERVAL:
        _warned_at[what] = now
        logger.warning(message, *args, exc_info=True)


async def flush() -> bool:
    """Write every pending UsageEvent, charge and settlement now; False if some must wait."""
    batch, redis_part = _take()
    # In the sync thread, so a flush cancelled mid-write still requeues what failed.
    if any(batch) and not await run_sync(_write_or_requeue, batch):
        if redis_part is not None:
            _requeue(redis_part)  # settled only once their events are written
        return False
    if redis_part is None or not any(redis_part):
        return True
    try:
        keys, args = _settle_args(redis_part)
        if len(args) > 1:  # some counter changes, or journal entries to drop
            await _SETTLE(keys, args)
    except Exception:
        return _settle_failed(redis_part)
    return True


def flush_now() -> None:
    """``flush`` for code without an event loop (at exit): the database first, then Redis."""
    batch, redis_part = _take()
    if any(batch) and not _write_or_requeue(batch):
        if redis_part is not None:
            _requeue(redis_part)
        return
    if redis_part is None or not any(redis_part):
        return
    try:
        settle_now(_redis_deltas(redis_part.settlements), redis_part.done)
    except Exception:
        _settle_failed(redis_part)


def _settle_failed(part: Batch) -> bool:
    _requeue(part)
    _warn("redis", "Settling %d requests in Redis failed; will retry", len(part.done))
    return False


async def shutdown() -> None:
    """Write everything pending (ASGI lifespan shutdown, after leases are given back).

    Retries for up to GATEWAY_SHUTDOWN_FLUSH_SECONDS while the database or Redis
    is away; what is still pending then is left to the exit flush and, for
    reservations, the reconciler.
    """
    deadline = time.monotonic() + settings.GATEWAY_SHUTDOWN_FLUSH_SECONDS
    flusher = _flusher
    if flusher is not None and flusher.get_loop() is asyncio.get_running_loop():
        # A batch the background flush has taken is not pending any more: let it land
        # (or be requeued) before the last flush, or the process could exit under it.
        await asyncio.wait((flusher,), timeout=settings.GATEWAY_SHUTDOWN_FLUSH_SECONDS)
    while True:
        written = await flush()
        if (written and not has_pending()) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    if has_pending():
        logger.error(
            "Shutting down with %d usage events and %d settlements unwritten",
            len(_pending.events),
            len(_pending.settlements),
        )


@atexit.register
def _flush_at_exit() -> None:
    try:
        flush_now()
    except Exception:
        logger.exception("Usage events could not be written at exit")


# --- Redis ------------------------------------------------------------------------------


def _redis_deltas(settlements: list[Settlement]) -> dict[str, int]:
    """Every settlement summed per Redis key: counters, wallet holds and balances."""
    deltas = counter_deltas(settlements)
    for settlement in settlements:
        admission = settlement.admission
        if admission.wallet_id is not None:
            balance, held = admission.plan.wallet_keys
            deltas[held] -= admission.hold
            deltas[balance] -= settlement.charge
    return {key: delta for key, delta in deltas.items() if delta}


def _settle_args(part: Batch) -> tuple[list, list]:
    return settle_args(_redis_deltas(part.settlements), part.done)


_SETTLE = Script(SETTLE_LUA)


def settle_args(deltas: dict[str, int], done: list[str], process: str = "") -> tuple[list, list]:
    """SETTLE_LUA's keys and arguments: deltas, then the journal entries of ``process`` to drop."""
    keys = [*deltas, journal.inflight_key(process or journal.process_name())]
    return keys, [len(deltas), *deltas.values(), *done]


def settle_now(deltas: dict[str, int], done: list[str] = (), *, process: str = "") -> None:
    """Apply ``deltas`` and drop ``done`` from a journal (default: this process's), from sync code."""
    keys, args = settle_args(deltas, list(done), process)
    if len(args) > 1:
        sb_redis.sync_client().eval(SETTLE_LUA, len(keys), *keys, *args)


def balance_add(*, wallet_id: int, micro: int) -> None:
    """Change the Redis copy of a wallet's balance, if it has one (a top-up, a refund)."""
    settle_now({balance_key(wallet_id): micro})


# --- Database ---------------------------------------------------------------------------


def _write_or_requeue(batch: Batch) -> bool:
    """Write ``batch``; keep it for a retry while the database is unreachable."""
    try:
        _write(batch)
    except (OperationalError, InterfaceError):
        _requeue(batch)
        _warn("database", "Writing %d usage events failed; will retry", len(batch.events))
        return False
    except DatabaseError:
        # One bad row must not hold up the rest: write them one by one.
        logger.exception(
            "A usage batch was refused; writing its %d rows one by one", len(batch.events)
        )
        _write_each(batch)
    return True


def _write(batch: Batch) -> None:
    """Events, database-path settlements, wallet charges and journal rows, in one transaction."""
    from orgs.services import wallet_charges_record

    with transaction.atomic():
        if batch.events:
            insert_many(UsageEvent, UsageRow._fields, batch.events)
            _touch_keys(batch.events)
        if batch.settlements:
            _settle_in_database(batch.settlements)
        if batch.charges:
            wallet_charges_record(batch.charges)
        if batch.done:
            journal.db_done(batch.done)


def _write_each(batch: Batch) -> None:
    parts = [Batch([event], [], [], []) for event in batch.events]
    parts += [Batch([], [], [charge], []) for charge in batch.charges]
    parts.append(Batch([], batch.settlements, [], batch.done))
    for part in parts:
        try:
            _write(part)
        except (OperationalError, InterfaceError):
            _requeue(part)
        except DatabaseError:
            logger.exception("Dropped a usage row the database refuses: %r", part)


def _touch_keys(events: list[UsageRow]) -> None:
    """Stamp the batch's keys as used: one UPDATE per batch, accurate to the flush interval."""
    from accounts.models import APIKey

    key_ids = {event.api_key_id for event in events if event.api_key_id}
    if key_ids:
        latest = max(event.created_at for event in events)
        APIKey.objects.filter(pk__in=key_ids).update(last_used_at=latest)


def _settle_in_database(settlements: list[Settlement]) -> None:
    """Apply settlements to counters and wallet holds (inside the flush transaction)."""
    from collections import defaultdict

    from django.db.models import DecimalField, F, Value
    from django.db.models.functions import Greatest

    from orgs.models import Wallet

    from ..models import LimitCounter

    held: dict[int, int] = defaultdict(int)
    for settlement in settlements:
        if settlement.admission.wallet_id is not None:
            held[settlement.admission.wallet_id] += settlement.admission.hold
    # Neither a counter nor a hold goes below zero, whatever a settlement says.
    for key, delta in counter_deltas(settlements).items():
        if delta:
            LimitCounter.objects.filter(key=key).update(value=Greatest(F("value") + delta, 0))
    zero = Value(0, output_field=DecimalField())
    for wallet_id, amount in held.items():
        Wallet.objects.filter(pk=wallet_id).update(held=Greatest(F("held") - credits(amount), zero))
