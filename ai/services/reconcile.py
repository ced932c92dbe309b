"""Settling what a dead gateway process admitted but never recorded (see ai/gateway/journal.py).

For each journal entry of a process whose heartbeat is older than
GATEWAY_PROCESS_TIMEOUT: if its UsageEvent was written (the process died
between the database write and the Redis settlement), the settlement is
applied from that event; otherwise a ``lost`` UsageEvent is written and the
reservation (counters, wallet hold) released, with nothing charged.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from panel import redis as sb_redis
from panel.db import insert_many

from ..gateway import journal
from ..gateway.reservations import COST
from ..models import GatewayProcess, InFlightAdmission, LimitCounter, UsageEvent, UsageStatus

logger = logging.getLogger(__name__)

LOST_FIELDS = (
    "created_at",
    "request_id",
    "user_id",
    "organisation_id",
    "api_key_id",
    "link_id",
    "model_id",
    "model_name",
    "route",
    "is_stream",
    "status",
    "error",
    "is_estimated",
    "prompt_tokens",
    "completion_tokens",
    "images",
    "cost",
    "latency_ms",
    "attempts",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def usage_reconcile(*, now: datetime | None = None) -> int:
    """Settle the journals of dead gateway processes; returns how many requests were settled."""
    now = now or timezone.now()
    if sb_redis.is_configured():
        return _reconcile_redis(now)
    return _reconcile_database(now)


def _lost_row(entry: dict, now: datetime) -> tuple:
    admitted = datetime.fromtimestamp(entry["admitted_at"], UTC)
    return (
        admitted,
        entry["request_id"],
        entry["user_id"],
        entry["organisation_id"],
        entry["api_key_id"],
        entry["link_id"],
        entry["model_id"],
        entry.get("model_name", ""),
        entry["route"],
        entry["is_stream"],
        UsageStatus.LOST,
        "the gateway process stopped before recording this request",
        True,
        0,
        0,
        0,
        Decimal("0"),
        0,
        1,
        0,
        0,
        0,
    )


def _deltas(entry: dict, event: UsageEvent | None) -> tuple[dict[str, int], dict[str, int]]:
    """Counter deltas and wallet (held, charge) changes that settle ``entry``.

    The same settlement the dead process would have made: from its written
    event, or, when none was written, as a request that delivered nothing.
    """
    from orgs.services import to_micro

    from ..gateway.pricing import Usage
    from ..gateway.reservations import Admission, settlement_for

    admission = Admission(tokens=entry["tokens"], cost=entry["cost"], wallet_id=entry["wallet_id"])
    if event is None:
        usage, cost, status = Usage(), 0, UsageStatus.LOST
    else:
        usage = Usage(event.prompt_tokens, event.completion_tokens, event.images)
        cost, status = to_micro(event.cost), event.status
    settlement = settlement_for(admission, usage=usage, cost=cost, status=status)
    counters = {key: settlement.deltas[metric] for key, metric in entry["counters"]}
    return counters, {"held": -entry["hold"], "charge": settlement.charge}


# --- Redis ---------------------------------------------------------------------------


def _dead_processes_redis(client) -> list[str]:
    dead = []
    for key in client.scan_iter(match=f"{journal.INFLIGHT_PREFIX}*", count=500):
        process = key.decode()[len(journal.INFLIGHT_PREFIX) :]
        if not client.exists(journal.alive_key(process)):
            dead.append(process)
    return dead


def _reconcile_redis(now: datetime) -> int:
    from ..gateway.ledger import settle_now

    client = sb_redis.sync_client()
    settled = 0
    oldest = now.timestamp() - settings.GATEWAY_PROCESS_TIMEOUT
    for process in _dead_processes_redis(client):
        journal_key = journal.inflight_key(process)
        fields = {name.decode(): value for name, value in client.hgetall(journal_key).items()}
        entries = [
            entry
            for name, value in fields.items()
            if not name.startswith("lease-")
            and (entry := json.loads(value))["admitted_at"] <= oldest
        ]
        leases = _leases(fields)
        if not entries and not leases:
            continue
        deltas = _settle_entries(entries, now)
        for counter, delta in _lease_deltas(leases).items():
            deltas[counter] = deltas.get(counter, 0) + delta
        done = [entry["request_id"] for entry in entries]
        done += [name for lease in leases for name in journal.lease_fields(lease["lease"])]
        # Events first, then counters and the journal in one atomic script: a crash
        # in between is settled again from the events now written.
        settle_now({k: v for k, v in deltas.items() if v}, done, process=process)
        settled += len(entries)
        logger.warning("Reconciled %d requests of dead gateway process %s", len(entries), process)
    return settled


def _leases(fields: dict[str, bytes]) -> list[dict]:
    """Each lease's static entry with what it held unspent: requests, tokens, micro-credits."""
    leases = []
    for name, value in fields.items():
        if name.startswith("lease-") and ":" not in name:
            lease = json.loads(value)
            lease["unspent"] = [int(fields.get(name + part, 0)) for part in journal.LEASE_TOTALS]
            leases.append(lease)
    return leases


def _lease_deltas(leases: list[dict]) -> dict[str, int]:
    from ..gateway.reservations import held_key

    deltas: dict[str, int] = defaultdict(int)
    for lease in leases:
        unspent = lease["unspent"]
        for counter, metric in lease["counters"]:
            deltas[counter] -= unspent[metric]
        if lease["wallet_id"] is not None:
            deltas[held_key(lease["wallet_id"])] -= unspent[COST]
    return deltas


def _settle_entries(entries: list[dict], now: datetime) -> dict[str, int]:
    """Write lost events and charges in the database; the Redis deltas that settle them."""
    from ..gateway.reservations import balance_key, held_key

    events = {
        event.request_id: event
        for event in UsageEvent.objects.filter(request_id__in=[e["request_id"] for e in entries])
    }
    totals: dict[str, int] = defaultdict(int)
    lost = []
    for entry in entries:
        event = events.get(entry["request_id"])
        if event is None:
            lost.append(_lost_row(entry, now))
        counters, wallet = _deltas(entry, event)
        for counter, delta in counters.items():
            totals[counter] += delta
        if entry["wallet_id"] is not None:
            totals[held_key(entry["wallet_id"])] += wallet["held"]
            totals[balance_key(entry["wallet_id"])] -= wallet["charge"]
    # The charges of written events were written with them; lost ones are not charged.
    insert_many(UsageEvent, list(LOST_FIELDS), lost)
    return {key: delta for key, delta in totals.items() if delta}


# --- Database ------------------------------------------------------------------------


def _reconcile_database(now: datetime) -> int:
    stale = now - timedelta(seconds=settings.GATEWAY_PROCESS_TIMEOUT)
    alive = set(GatewayProcess.objects.filter(seen_at__gte=stale).values_list("name", flat=True))
    with transaction.atomic():
        rows = list(
            InFlightAdmission.objects.select_for_update()
            .filter(admitted_at__lte=stale)
            .exclude(process__in=alive)
        )
        if not rows:
            GatewayProcess.objects.filter(seen_at__lt=stale).delete()
            return 0
        entries = [row.entry for row in rows]
        insert_many(UsageEvent, list(LOST_FIELDS), [_lost_row(e, now) for e in entries])
        _release_in_database(entries)
        InFlightAdmission.objects.filter(pk__in=[row.pk for row in rows]).delete()
    for process in {row.process for row in rows}:
        logger.warning("Reconciled the requests of dead gateway process %s", process)
    return len(rows)


def _release_in_database(entries: list[dict]) -> None:
    from orgs.models import Wallet
    from orgs.services import MICRO

    counters: dict[str, int] = defaultdict(int)
    held: dict[int, int] = defaultdict(int)
    for entry in entries:
        deltas, wallet = _deltas(entry, None)
        for key, delta in deltas.items():
            counters[key] += delta
        if entry["wallet_id"] is not None:
            held[entry["wallet_id"]] += wallet["held"]
    for key, delta in counters.items():
        LimitCounter.objects.filter(key=key).update(value=F("value") + delta)
    for wallet_id, delta in held.items():
        Wallet.objects.filter(pk=wallet_id).update(held=F("held") + Decimal(delta) * MICRO)
