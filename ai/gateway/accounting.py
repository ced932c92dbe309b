"""Step 7: tokens, cost and the one UsageEvent each admitted request leaves.

Events are appended to an in-process buffer and written in batches by a
background task (one thread hop per batch, never before the first byte).
``flush()`` writes what is pending; ``shutdown()`` (ASGI lifespan) and, last,
interpreter exit write the rest.

What the buffer guarantees: a batch the database cannot take (it is down) is
kept and retried, in order; a row the database refuses (an integrity or data
error) is written on its own, so it never holds up the others, and logged if it
still fails. Events reach the database before their Redis settlement, so a
crash between the two leaves a journal entry (``journal``) that the reconciler
settles from the written event.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone

from panel import redis as sb_redis
from panel.db import insert_many, run_sync

from ..models import UsageEvent
from ..selectors import ModelInfo
from . import journal, observability

logger = logging.getLogger(__name__)
MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000001")
MAX_TOKENS = 2**31 - 1  # what a UsageEvent's token columns hold


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    is_estimated: bool = False


def usage_from_block(block: dict | None) -> Usage | None:
    """The upstream's own usage block, if it sent a sensible one."""
    if not isinstance(block, dict):
        return None
    prompt, completion = block.get("prompt_tokens"), block.get("completion_tokens", 0)
    if not all(
        isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_TOKENS
        for n in (prompt, completion)
    ):
        return None  # absent, or not a count we could store: estimated instead
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def estimate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English."""
    return (len(text) + 3) // 4


def estimate_prompt(body: dict) -> int:
    """A prompt estimate from the request body: messages, prompt or input."""
    parts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return max(1, sum(estimate_tokens(p) for p in parts))


# Reservations need an upper bound on a prompt, not a guess. A token of a
# byte-level BPE tokenizer (GPT, Llama 3, Qwen, Mistral's Tekken) covers at
# least one UTF-8 byte, so a text never has more tokens than bytes: one per
# character for ASCII. A chat template adds a few special tokens around each
# message and before the reply. An image, audio or file part has no bound the
# gateway can see without decoding it: it is reserved at a fixed allowance.
MESSAGE_OVERHEAD = 8
REPLY_OVERHEAD = 8
MEDIA_PART_TOKENS = 2048
# Fields a template renders into the prompt as JSON (tool definitions and schemas).
JSON_PROMPT_FIELDS = ("tools", "functions", "tool_choice", "response_format")


def bound_tokens(text: str) -> int:
    """At most as many tokens as UTF-8 bytes (``isascii`` is O(1) in CPython)."""
    return len(text) if text.isascii() else len(text.encode())


def prompt_bound(body: dict) -> int:
    """An upper bound on the prompt's tokens (text parts), for reservations."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        total += REPLY_OVERHEAD + sum(_message_bound(message) for message in messages)
    for name in ("prompt", "input", "suffix"):
        total += _items_bound(body.get(name))
    for name in JSON_PROMPT_FIELDS:
        if body.get(name) is not None:
            total += bound_tokens(json.dumps(body[name]))
    return max(1, total)


def _message_bound(message) -> int:
    """A message's role, name, content, tool calls and so on, plus its template tokens."""
    if not isinstance(message, dict):
        return MESSAGE_OVERHEAD + bound_tokens(json.dumps(message))
    total = MESSAGE_OVERHEAD
    for key, value in message.items():
        if isinstance(value, str):
            total += bound_tokens(value)
        elif key == "content" and isinstance(value, list):
            total += sum(_part_bound(part) for part in value)
        elif value is not None:
            total += bound_tokens(json.dumps(value))
    return total


def _part_bound(part) -> int:
    if isinstance(part, str):
        return bound_tokens(part)
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return bound_tokens(part["text"])
    return MEDIA_PART_TOKENS


def _items_bound(value) -> int:
    """``prompt`` or ``input``: a text, texts, token ids, lists of token ids, or messages."""
    if isinstance(value, str):
        return bound_tokens(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += bound_tokens(item)
        elif isinstance(item, list):
            total += len(item)  # token ids
        elif isinstance(item, dict):
            total += _message_bound(item)
        else:
            total += 1  # one token id
    return total


def cost_of(model: ModelInfo, usage: Usage) -> Decimal:
    cost = (
        usage.prompt_tokens * model.input_price_per_million
        + usage.completion_tokens * model.output_price_per_million
    ) / MILLION + usage.images * model.price_per_image
    return cost.quantize(COST_QUANTUM)


@dataclass(slots=True)
class Record:
    """Everything known about one admitted request, filled in along the way."""

    request_id: str
    route: str
    user_id: int
    organisation_id: int | None
    api_key_id: int | None
    link_id: int
    model: ModelInfo
    is_stream: bool
    started_at: float
    upstream_id: int | None = None
    attempts: int = 0
    status: str = "ok"
    http_status: int | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: int = 0
    ttft_ms: int | None = None
    error: str = ""
    admission: object | None = None  # limits.Admission, settled when the event is queued
    is_journaled: bool = False  # an in-flight journal entry waits for this event


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


class Batch(NamedTuple):
    """What one flush writes."""

    events: list[UsageRow]
    settlements: list  # limits.Settlement: counter deltas and wallet holds
    charges: list[tuple[int, Decimal, str]]  # (wallet id, cost, request id)
    done: list[str]  # request ids whose journal entries go with their events


_pending = Batch([], [], [], [])
_flusher: asyncio.Task | None = None
_warned_at: dict[str, float] = {}
WARN_INTERVAL = 30.0


def usage_record(record: Record) -> None:
    """Queue the UsageEvent of a finished request and settle its reservation."""
    cost = cost_of(record.model, record.usage)
    usage = record.usage
    _pending.events.append(
        UsageRow(
            timezone.now(),
            record.request_id,
            record.user_id,
            record.organisation_id,
            record.api_key_id,
            record.link_id,
            record.model.id,
            record.model.name,
            record.upstream_id,
            record.route,
            record.is_stream,
            record.status,
            record.http_status,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.images,
            usage.is_estimated,
            cost,
            record.latency_ms,
            record.ttft_ms,
            max(record.attempts, 1),
            record.error[:300],
        )
    )
    if record.is_journaled:
        _pending.done.append(record.request_id)
    if record.admission is not None and not record.admission.is_empty:
        _settle(record, cost)
    observability.request_finished(record)
    _ensure_flusher()


def _settle(record: Record, cost: Decimal) -> None:
    from orgs.services import to_micro

    from . import limits

    usage = record.usage
    # Nothing delivered (a failure, or a client gone before any content): charge nothing.
    released = record.status != "ok" and not (usage.completion_tokens or usage.images)
    settlement = limits.settlement_for(
        record.admission, usage=usage, cost_micro=to_micro(cost), released=released
    )
    if settlement.charge:
        _pending.charges.append((record.admission.wallet_id, cost, record.request_id))
    # Settled in batches with the usage flush: one Redis call or one transaction
    # per interval. Until then the reservation stands, which errs on the safe side.
    _pending.settlements.append(settlement)


def settlement_queue(settlement, *, done: list[str] = ()) -> None:
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
        _flush_sync()
        return
    if _flusher is None or _flusher.done() or _flusher.get_loop() is not loop:
        _flusher = loop.create_task(_flush_soon())


async def _flush_soon() -> None:
    # Records queued while a batch is being written are picked up by the next turn;
    # a batch that could not be written waits a little longer before the next try.
    delay = settings.GATEWAY_USAGE_FLUSH_INTERVAL
    while has_pending():
        await asyncio.sleep(delay)
        written = await flush()
        delay = settings.GATEWAY_USAGE_FLUSH_INTERVAL if written else min(max(delay, 0.5) * 2, 5)


def _take() -> Batch:
    batch = Batch(*(pending[:] for pending in _pending))
    for pending, taken in zip(_pending, batch, strict=True):
        del pending[: len(taken)]
    return batch


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
    batch = _take()
    if not any(batch):
        return True
    if sb_redis.is_configured():
        redis_part = Batch([], batch.settlements, [], batch.done)
        batch = Batch(batch.events, [], batch.charges, [])
    else:
        redis_part = None
    # In the sync thread, so a flush cancelled mid-write still requeues what failed.
    if any(batch) and not await run_sync(_write_or_requeue, batch):
        if redis_part is not None:
            _requeue(redis_part)  # settled only once their events are written
        return False
    if redis_part is not None and any(redis_part):
        return await _settle_redis(redis_part)
    return True


async def _settle_redis(part: Batch) -> bool:
    from .limits import settle_in_redis

    try:
        await settle_in_redis(part.settlements, done=part.done)
    except Exception:
        _requeue(part)
        _warn("redis", "Settling %d requests in Redis failed; will retry", len(part.done))
        return False
    return True


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
    from django.db import transaction

    from orgs.services import wallet_charges_record

    from .limits import settle_in_database

    with transaction.atomic():
        if batch.events:
            insert_many(UsageEvent, UsageRow._fields, batch.events)
            _touch_keys(batch.events)
        if batch.settlements:
            settle_in_database(batch.settlements)
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


async def shutdown() -> None:
    """Give leases back and write everything pending (ASGI lifespan shutdown).

    Retries for up to GATEWAY_SHUTDOWN_FLUSH_SECONDS while the database or Redis
    is away; what is still pending then is left to the exit flush and, for
    reservations, the reconciler.
    """
    from .limits import leases_release

    leases_release()
    deadline = time.monotonic() + settings.GATEWAY_SHUTDOWN_FLUSH_SECONDS
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


def _flush_sync() -> None:
    """``flush`` for code without an event loop: the database first, then Redis."""
    batch = _take()
    if not any(batch):
        return
    redis_part = None
    if sb_redis.is_configured():
        redis_part = Batch([], batch.settlements, [], batch.done)
        batch = Batch(batch.events, [], batch.charges, [])
    if not _write_or_requeue(batch):
        return
    if redis_part is not None and any(redis_part):
        from .limits import settle_in_redis_now

        try:
            settle_in_redis_now(redis_part.settlements, done=redis_part.done)
        except Exception:
            _requeue(redis_part)
            _warn("redis", "Settling %d requests in Redis failed", len(redis_part.done))


@atexit.register
def _flush_at_exit() -> None:
    try:
        from .limits import leases_release

        leases_release()
        _flush_sync()
    except Exception:
        logger.exception("Usage events could not be written at exit")
