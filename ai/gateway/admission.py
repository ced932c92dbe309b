"""Step 3: admit a request (reserve it on every limit and wallet) and journal it.

Owns the order of admission: the request's numbers are checked, its
reservation planned (``reservations``), then made atomically for every
process, with Redis by the admission script (``leases``), without Redis in one
database transaction under row locks (SQLite: the database write lock); and
the admission is journalled where a reconciler finds it if this process dies
(``journal``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from panel import redis as sb_redis
from panel.db import run_sync
from panel.errors import DependencyUnavailable, ErrorCode

from ..models import UsageStatus
from . import journal, ledger
from .leases import redis_admit
from .observability import REJECTIONS
from .pricing import Usage
from .reservations import (
    Admission,
    rate_headers,
    refusal,
    reservation_for,
    settlement_for,
    short_of_credits,
)
from .resolve import Resolution
from .validation import bounds_check


async def admit(
    *, resolution: Resolution, body: dict, route_name: str, event: dict, on_cancelled=None
) -> Admission:
    """Reserve the request on every limit and wallet and journal it; raise 429/402 to refuse.

    ``event`` holds the UsageEvent's ids, for the journal. A caller cancelled
    while its reservation is being made never learns of it: once made,
    ``on_cancelled(admission)`` gets it (default: give it back).
    """
    bounds_check(body, max_output_tokens=resolution.model.max_output_tokens)
    admission = reservation_for(resolution, body, route_name)
    admission.event = event
    if not sb_redis.is_configured():
        if not admission.is_empty:
            await _shielded(run_sync(_db_admit, admission), admission, on_cancelled)
            journal.db_heartbeat_start()
            admission.headers = rate_headers(admission)
        return admission
    if not admission.is_empty:
        try:
            await redis_admit(admission, lambda work: _shielded(work, admission, on_cancelled))
        except sb_redis.UNREACHABLE as exc:
            # The counters live in Redis: refuse rather than guess. A reservation made
            # just before the connection was lost stays counted, the safe side.
            REJECTIONS.labels(ErrorCode.SERVICE_UNAVAILABLE).inc()
            raise DependencyUnavailable(
                "Limits cannot be checked right now (Redis is unreachable); retry shortly."
            ) from exc
        admission.headers = rate_headers(admission)
    admission.is_journaled = journal.redis_add(event, admission)
    return admission


async def _shielded(work, admission: Admission, on_cancelled):
    """Await ``work``; if the caller is cancelled first, hand a reservation it made on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        handler = on_cancelled or give_back
        task.add_done_callback(lambda done: _after_cancel(done, admission, handler))
        raise


def _after_cancel(done: asyncio.Future, admission: Admission, on_cancelled) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    result = done.result()
    if result is None or result[0] == 1:  # the database path returns None once admitted
        on_cancelled(admission)


def give_back(admission: Admission) -> None:
    """Release the reservation of a request cancelled while it was being admitted."""
    cancelled = settlement_for(
        admission, usage=Usage(), cost=0, status=UsageStatus.CLIENT_CANCELLED
    )
    ledger.settlement_queue(cancelled)


def _db_admit(admission: Admission) -> None:
    from django.db import transaction
    from django.db.models import F

    from orgs.models import Wallet
    from orgs.services import credits, to_micro

    from ..models import LimitCounter

    now = datetime.now(UTC)
    limits, amounts = admission.limits, admission.amounts
    with transaction.atomic():
        rows = _locked_counters(admission)
        admission.values = [rows[limit.key].value for limit in limits]
        for limit, value in zip(limits, admission.values, strict=True):
            # A window that usage has used up refuses everything, even a request of nothing.
            if value + amounts[limit.metric] > limit.limit or value >= limit.limit:
                raise refusal(admission, limit)
        if admission.wallet_id is not None:
            wallet = Wallet.objects.select_for_update().get(pk=admission.wallet_id)
            if to_micro(wallet.balance - wallet.held) < admission.hold:
                raise short_of_credits()
            # QuerySet.update, not save(): a save would signal a cache invalidation.
            Wallet.objects.filter(pk=wallet.pk).update(held=F("held") + credits(admission.hold))
        for limit in limits:
            LimitCounter.objects.filter(pk=rows[limit.key].pk).update(
                value=F("value") + amounts[limit.metric]
            )
        journal.db_add(admission.event, admission)
        admission.is_journaled = True
    LimitCounter.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()


def _locked_counters(admission: Admission) -> dict:
    """The admission's counter rows, created at zero if missing, locked in key order."""
    from ..models import LimitCounter

    limits = admission.limits
    if not limits:
        return {}
    LimitCounter.objects.bulk_create(
        [
            LimitCounter(
                key=limit.key, value=0, expires_at=datetime.fromtimestamp(limit.reset_at, UTC)
            )
            for limit in limits
        ],
        ignore_conflicts=True,
    )
    keys = sorted(limit.key for limit in limits)
    locked = LimitCounter.objects.select_for_update().filter(key__in=keys).order_by("key")
    return {row.key: row for row in locked}
