"""Step 7: tokens, cost and the one UsageEvent each admitted request leaves.

Events are appended to an in-process buffer and written in batches by a
background task (one thread hop per batch, never before the first byte).
``flush()`` writes what is pending; at interpreter exit the rest is written
synchronously.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.utils import timezone

from panel import redis as sb_redis
from panel.db import insert_many, run_sync

from ..models import UsageEvent
from ..selectors import ModelInfo
from . import observability

logger = logging.getLogger(__name__)
MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000001")


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
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
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


class UsageRow(NamedTuple):
    """One UsageEvent to insert (a plain tuple: no model instance on the request path)."""

    created_at: datetime
    request_id: str
    user_id: int
    organisation_id: int | None
    api_key_id: int | None
    link_id: int
    model_id: int
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


_pending: list[UsageRow] = []
_pending_settlements: list = []  # database path: counter deltas and wallet holds
_pending_charges: list[tuple[int, Decimal, str]] = []  # (wallet id, cost, request id)
_flusher: asyncio.Task | None = None


def usage_record(record: Record) -> None:
    """Queue the UsageEvent of a finished request and settle its reservation."""
    cost = cost_of(record.model, record.usage)
    usage = record.usage
    _pending.append(
        UsageRow(
            timezone.now(),
            record.request_id,
            record.user_id,
            record.organisation_id,
            record.api_key_id,
            record.link_id,
            record.model.id,
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
        _pending_charges.append((record.admission.wallet_id, cost, record.request_id))
    # Settled in batches with the usage flush: one Redis call or one transaction
    # per interval. Until then the reservation stands, which errs on the safe side.
    _pending_settlements.append(settlement)


def settlement_queue(settlement) -> None:
    """Queue a settlement that has no usage event (a lease given back, a cancelled admission)."""
    _pending_settlements.append(settlement)
    _ensure_flusher()


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
    # Records queued while a batch is being written are picked up by the next turn.
    while any((_pending, _pending_settlements, _pending_charges)):
        await asyncio.sleep(settings.GATEWAY_USAGE_FLUSH_INTERVAL)
        await flush()


def _take() -> tuple[list, list, list]:
    batch = tuple(pending[:] for pending in (_pending, _pending_settlements, _pending_charges))
    for pending, taken in zip(
        (_pending, _pending_settlements, _pending_charges), batch, strict=True
    ):
        del pending[: len(taken)]
    return batch


def _write(batch: tuple[list, list, list]) -> None:
    """Events, database-path settlements and wallet charges, in one transaction."""
    from django.db import transaction

    from orgs.services import wallet_charges_record

    from .limits import settle_in_database

    events, settlements, charges = batch
    with transaction.atomic():
        if events:
            insert_many(UsageEvent, UsageRow._fields, events)
            _touch_keys(events)
        if settlements and not sb_redis.is_configured():
            settle_in_database(settlements)
        if charges:
            wallet_charges_record(charges)


def _touch_keys(events: list[UsageRow]) -> None:
    """Stamp the batch's keys as used: one UPDATE per batch, accurate to the flush interval."""
    from accounts.models import APIKey

    key_ids = {event.api_key_id for event in events if event.api_key_id}
    if key_ids:
        latest = max(event.created_at for event in events)
        APIKey.objects.filter(pk__in=key_ids).update(last_used_at=latest)


async def flush() -> None:
    """Apply pending settlements and write every pending UsageEvent and charge now."""
    batch = _take()
    if not any(batch):
        return
    if batch[1] and sb_redis.is_configured():
        from .limits import settle_in_redis

        try:
            await settle_in_redis(batch[1])
        except Exception:
            _requeue(batch)
            logger.exception("Settling %d requests in Redis failed; will retry", len(batch[1]))
            raise
        batch = (batch[0], [], batch[2])
        if not any(batch):
            return
    try:
        await run_sync(_write, batch)
    except Exception:
        # Put them back so the next flush (or exit) retries; never lose usage silently.
        _requeue(batch)
        logger.exception("Writing %d usage events failed; will retry", len(batch[0]))
        raise


def _flush_sync() -> None:
    """``flush`` for code without an event loop."""
    batch = _take()
    if batch[1] and sb_redis.is_configured():
        from .limits import settle_in_redis_now

        settle_in_redis_now(batch[1])
        batch = (batch[0], [], batch[2])
    _write(batch)


def _requeue(batch: tuple[list, list, list]) -> None:
    for pending, taken in zip(
        (_pending, _pending_settlements, _pending_charges), batch, strict=True
    ):
        pending[:0] = taken


@atexit.register
def _flush_at_exit() -> None:
    try:
        from .limits import leases_release

        leases_release()
        _flush_sync()
    except Exception:
        logger.exception("Usage events could not be written at exit")
