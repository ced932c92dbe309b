"""Usage rollups and retention.

A rollup run recomputes only what changed: the hours that received events since
the last run (a late event, reconciled or flushed after an outage, makes its old
hour dirty too) and the days of those hours. New events are found by id. On
PostgreSQL an insert can commit a lower id after a higher one is visible (ids are
drawn at insert, seen at commit), so the run re-reads every id above
``RollupState.rolled_id``, which trails the highest id seen by
USAGE_ROLLUP_SAFETY_SECONDS: an insert transaction open longer than that could be
missed, and a rebuild (``usage_rollup(rebuild=True)``, ``manage.py usage_rollup
--rebuild``) counts it.

An hour is recomputed from its raw events; a day from its hour rows, never from
raw events: sums add up, and each hour keeps its latency and TTFT reservoirs
(``UsageSample``), which a day merges into one uniform sample. An incremental run
and a rebuild go through the same functions, so their results are identical.
"""

from __future__ import annotations

import logging
import operator
import random
import struct
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import reduce

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from panel.models import Heartbeat

from ..models import (
    RollupPeriod,
    RollupState,
    UsageEvent,
    UsageRollup,
    UsageSample,
    UsageStatus,
)

logger = logging.getLogger(__name__)

ROLLUP_STATE = "usage_rollup"
DIMENSIONS = ("model_id", "link_id", "user_id", "organisation_id", "api_key_id")
TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
SUMS = ("requests", "errors", *TOKENS, "images", "cost")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Latency percentiles are computed in Python over the bucket's successful events, so
# SQLite and PostgreSQL agree; the interpolation is PostgreSQL's percentile_cont. The
# cost stays bounded: one streamed pass (.iterator()) over four small columns of an
# hour's events, and at most PERCENTILE_SAMPLES values kept per hour and grouping:
# exact up to that, a seeded reservoir sample (Algorithm R) past it. A day merges its
# hours' samples into one uniform sample of the same size.
PERCENTILE_SAMPLES = 5000
PERCENTILES = {"p50": 0.5, "p95": 0.95}


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def usage_rollup(*, now: datetime | None = None, rebuild: bool = False) -> int:
    """Bring the hourly and daily rollups up to date with the raw events.

    Recomputes the hours that received events since the last run, and their days;
    the first run, or ``rebuild``, recomputes every day that still has raw events.
    Idempotent. Returns the number of hourly rows written.
    """
    now = now or timezone.now()
    committed = None
    if rebuild or not RollupState.objects.filter(rebuilt_at__isnull=False).exists():
        committed = _committed_max_id()  # before the run's transaction: see there
    with transaction.atomic():
        # One run at a time, whichever worker it is on: the state row is the lock.
        RollupState.objects.get_or_create(pk=1)
        state = RollupState.objects.select_for_update(skip_locked=True).filter(pk=1).first()
        if state is None:
            # Another run is under way (a rebuild can take minutes): rather than hold
            # a worker waiting for it, leave what arrives meanwhile to the next run.
            return 0
        if state.rebuilt_at is None or rebuild:
            written = _rebuild(state, now, committed if committed is not None else _max_id())
        else:
            written = _catch_up(state, now)
        state.ran_at = now
        state.save()
        Heartbeat.objects.update_or_create(name=ROLLUP_STATE, defaults={"beat_at": now})
    return written


def _max_id() -> int:
    return UsageEvent.objects.aggregate(top=Max("id"))["top"] or 0


def _committed_max_id() -> int:
    """The highest event id, with every lower one committed (or rolled back) by now.

    On PostgreSQL, SHARE mode waits for the open insert transactions (they hold ROW
    EXCLUSIVE from before they draw an id) and holds new ones back for one MAX(id),
    in a transaction of its own. SQLite commits writes in id order.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '10s'")
                cursor.execute(f"LOCK TABLE {UsageEvent._meta.db_table} IN SHARE MODE")
        return _max_id()


def _catch_up(state: RollupState, now: datetime) -> int:
    newest = _max_id()
    hours = set(
        UsageEvent.objects.filter(id__gt=state.rolled_id)
        .annotate(hour=TruncHour("created_at"))
        .values_list("hour", flat=True)
        .distinct()
        .order_by()
    )
    written = _recompute(_without_pruned(hours, state))
    _advance(state, now, newest)
    return written


def _advance(state: RollupState, now: datetime, newest: int) -> None:
    """Record this run's highest id; ids seen a safety window ago count as rolled up.

    What was visible then has committed since, and this run re-read every id above
    the previous ``rolled_id``: so all of them are counted now.
    """
    safe_before = now.timestamp() - settings.USAGE_ROLLUP_SAFETY_SECONDS
    seen = [*state.seen, [now.timestamp(), newest]]
    for at, top in seen:
        if at <= safe_before:
            state.rolled_id = max(state.rolled_id, top)
    state.seen = [[at, top] for at, top in seen if at > safe_before]


def _without_pruned(hours: set[datetime], state: RollupState) -> set[datetime]:
    horizon = state.pruned_before
    if horizon is None:
        return hours
    late = {hour for hour in hours if hour < horizon}
    if late:
        # Their days' other raw events are pruned: a recount would replace the
        # rollups with these few events. They go with the next prune.
        logger.warning(
            "Usage events arrived for %d hours before the prune horizon %s; not rolled up",
            len(late),
            horizon,
        )
    return hours - late


def _rebuild(state: RollupState, now: datetime, committed: int) -> int:
    """Recompute every day from its raw events (those before the prune horizon are gone)."""
    start = _rebuild_start(state)
    if start is None:
        written = 0
    else:
        UsageRollup.objects.filter(bucket_start__gte=start).delete()
        UsageSample.objects.filter(bucket_start__gte=start).delete()
        hours = set(
            UsageEvent.objects.filter(created_at__gte=start)
            .annotate(hour=TruncHour("created_at"))
            .values_list("hour", flat=True)
            .distinct()
            .order_by()
        )
        written = _recompute(hours)
    # Every id up to ``committed`` was committed before this run read the events.
    state.rolled_id = committed
    state.seen = [[now.timestamp(), committed]]
    state.rebuilt_at = now
    return written


def _rebuild_start(state: RollupState) -> datetime | None:
    events = UsageEvent.objects.order_by("created_at").values_list("created_at", flat=True)
    if state.pruned_before is not None:
        events = events.filter(created_at__gte=state.pruned_before)
    first = events.first()
    if first is None:
        return state.pruned_before
    start = _day(first)
    # The first run after an upgrade: rollups of the first day may have been made when
    # more of its events were there (pruning used to cut days mid-way). Keep them.
    is_upgrade = state.rebuilt_at is None and state.pruned_before is None
    if is_upgrade and UsageRollup.objects.filter(bucket_start__lt=start + DAY).exists():
        start += DAY
        state.pruned_before = start
    return start


def _recompute(hours: Iterable[datetime]) -> int:
    """Replace the rollups of ``hours`` from raw events, then those of their days."""
    by_day: dict[datetime, list[datetime]] = defaultdict(list)
    for hour in hours:
        by_day[_day(hour)].append(hour)
    written = 0
    for day, day_hours in sorted(by_day.items()):
        written += _hours_replace(sorted(day_hours))
        _day_replace(day)
    return written


# --- Hours: from raw events ----------------------------------------------------------


def _spans(hours: list[datetime]) -> Q:
    """The events of ``hours`` (sorted), as few created_at ranges as they make."""
    ranges: list[list[datetime]] = []
    for hour in hours:
        if ranges and ranges[-1][1] == hour:
            ranges[-1][1] = hour + HOUR
        else:
            ranges.append([hour, hour + HOUR])
    return reduce(
        operator.or_, (Q(created_at__gte=start, created_at__lt=end) for start, end in ranges)
    )


def _hours_replace(hours: list[datetime]) -> int:
    events = UsageEvent.objects.filter(_spans(hours))
    rollups = _hourly(events)
    reservoirs = _reservoirs(events)
    samples = []
    for rollup in rollups:
        key = _key(rollup)
        latency, ttft = reservoirs.get(key) or (_Reservoir(), _Reservoir())
        _set_percentiles(rollup, latency, ttft)
        if latency.seen or ttft.seen:
            ids = dict(zip(DIMENSIONS, key[1:], strict=True))
            data = _pack(latency, ttft)
            samples.append(UsageSample(bucket_start=key[0], **ids, data=data))
    UsageRollup.objects.filter(period=RollupPeriod.HOUR, bucket_start__in=hours).delete()
    UsageSample.objects.filter(bucket_start__in=hours).delete()
    UsageRollup.objects.bulk_create(rollups, batch_size=1000)
    UsageSample.objects.bulk_create(samples, batch_size=500)
    return len(rollups)


def _key(row) -> tuple:
    return (row.bucket_start, *(getattr(row, dim) for dim in DIMENSIONS))


def _hourly(events) -> list[UsageRollup]:
    rows = (
        events.annotate(bucket=TruncHour("created_at"))
        .values("bucket", *DIMENSIONS)
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=~Q(status=UsageStatus.OK)),
            **{f"sum_{name}": Sum(name) for name in TOKENS},
            image_count=Sum("images"),
            total_cost=Sum("cost"),
        )
        .order_by()
    )
    return [
        UsageRollup(
            period=RollupPeriod.HOUR,
            bucket_start=row["bucket"],
            **{dim: row[dim] or 0 for dim in DIMENSIONS},
            requests=row["requests"],
            errors=row["errors"],
            **{name: row[f"sum_{name}"] or 0 for name in TOKENS},
            images=row["image_count"] or 0,
            cost=row["total_cost"] or 0,
        )
        for row in rows
    ]


class _Reservoir:
    """Up to PERCENTILE_SAMPLES values of a stream, every value equally likely kept."""

    __slots__ = ("seen", "values")

    def __init__(self, seen: int = 0, values: list[int] | None = None) -> None:
        self.seen = seen
        self.values: list[int] = values if values is not None else []

    def add(self, value: int, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < PERCENTILE_SAMPLES:
            self.values.append(value)
        elif (slot := rng.randrange(self.seen)) < PERCENTILE_SAMPLES:
            self.values[slot] = value


def _reservoirs(events) -> dict[tuple, tuple[_Reservoir, _Reservoir]]:
    """Latency and TTFT reservoirs of successful events per hourly rollup key.

    In id order, each key with its own seeded generator: an hour's samples depend
    on its events only, whichever run (and whatever other hours) computes them.
    """
    by_key: dict[tuple, tuple[_Reservoir, _Reservoir, random.Random]] = {}
    rows = (
        events.filter(status=UsageStatus.OK)
        .annotate(bucket=TruncHour("created_at"))
        .values_list("bucket", *DIMENSIONS, "latency_ms", "ttft_ms")
        .order_by("id")
    )
    for bucket, *ids, latency, ttft in rows.iterator(chunk_size=2000):
        key = (bucket, *(i or 0 for i in ids))
        entry = by_key.get(key)
        if entry is None:
            entry = by_key[key] = (_Reservoir(), _Reservoir(), _rng("hour", key))
        entry[0].add(latency, entry[2])
        if ttft is not None:
            entry[1].add(ttft, entry[2])
    return {key: (latency, ttft) for key, (latency, ttft, _) in by_key.items()}


def _rng(kind: str, key: tuple) -> random.Random:
    bucket, *ids = key
    return random.Random(f"{kind} {bucket:%Y-%m-%dT%H} {ids}")


_HEADER = struct.Struct("<QQII")


def _pack(latency: _Reservoir, ttft: _Reservoir) -> bytes:
    """Seen counts, sample sizes, then the samples, as little-endian integers."""
    values = [*latency.values, *ttft.values]
    header = _HEADER.pack(latency.seen, ttft.seen, len(latency.values), len(ttft.values))
    return header + struct.pack(f"<{len(values)}I", *values)


def _unpack(data: bytes) -> tuple[_Reservoir, _Reservoir]:
    latency_seen, ttft_seen, latency_n, ttft_n = _HEADER.unpack_from(data)
    values = list(struct.unpack_from(f"<{latency_n + ttft_n}I", data, _HEADER.size))
    return _Reservoir(latency_seen, values[:latency_n]), _Reservoir(ttft_seen, values[latency_n:])


# --- Days: from their hours ----------------------------------------------------------


def _day_replace(day: datetime) -> None:
    hours = UsageRollup.objects.filter(
        period=RollupPeriod.HOUR, bucket_start__gte=day, bucket_start__lt=day + DAY
    ).order_by("bucket_start")
    days: dict[tuple, UsageRollup] = {}
    for hour in hours:
        key = (day, *(getattr(hour, dim) for dim in DIMENSIONS))
        rollup = days.get(key)
        if rollup is None:
            rollup = days[key] = UsageRollup(
                period=RollupPeriod.DAY,
                bucket_start=day,
                **{dim: getattr(hour, dim) for dim in DIMENSIONS},
            )
        for name in SUMS:
            setattr(rollup, name, getattr(rollup, name) + getattr(hour, name))
    parts: dict[tuple, list[tuple[_Reservoir, _Reservoir]]] = defaultdict(list)
    samples = UsageSample.objects.filter(bucket_start__gte=day, bucket_start__lt=day + DAY)
    for sample in samples.order_by("bucket_start"):
        parts[(day, *(getattr(sample, dim) for dim in DIMENSIONS))].append(
            _unpack(bytes(sample.data))
        )
    for key, rollup in days.items():
        rng = _rng("day", key)
        hour_parts = parts.get(key, [])
        latency = _merge([part[0] for part in hour_parts], rng)
        ttft = _merge([part[1] for part in hour_parts], rng)
        _set_percentiles(rollup, latency, ttft)
    UsageRollup.objects.filter(period=RollupPeriod.DAY, bucket_start=day).delete()
    UsageRollup.objects.bulk_create(days.values(), batch_size=1000)


def _merge(parts: list[_Reservoir], rng: random.Random) -> _Reservoir:
    """One uniform sample of the union of ``parts``' streams, from their uniform samples.

    How many values each part gives is drawn as from the union without
    replacement (each draw picks a part by its unseen values left), and that many
    are sampled from its reservoir: every value of the union is equally likely
    kept, as in one reservoir over the whole stream.
    """
    seen = sum(part.seen for part in parts)
    if seen <= PERCENTILE_SAMPLES:
        return _Reservoir(seen, [value for part in parts for value in part.values])
    left = [part.seen for part in parts]
    taken = [0] * len(parts)
    remaining = seen
    for _ in range(PERCENTILE_SAMPLES):
        draw = rng.randrange(remaining)
        index = 0
        while draw >= left[index]:
            draw -= left[index]
            index += 1
        left[index] -= 1
        taken[index] += 1
        remaining -= 1
    values = []
    for part, count in zip(parts, taken, strict=True):
        values += rng.sample(part.values, count)
    return _Reservoir(seen, values)


def percentile(values: list[int], fraction: float) -> float | None:
    """The ``fraction`` percentile with linear interpolation (percentile_cont); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * fraction
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _set_percentiles(rollup: UsageRollup, latency: _Reservoir, ttft: _Reservoir) -> None:
    for name, fraction in PERCENTILES.items():
        setattr(rollup, f"latency_{name}_ms", percentile(latency.values, fraction))
        setattr(rollup, f"ttft_{name}_ms", percentile(ttft.values, fraction))


# --- Retention -----------------------------------------------------------------------


def usage_prune(*, now: datetime | None = None, batch_size: int = 5000) -> int:
    """Delete raw events of the days past the retention setting, in batches; rollups stay.

    Whole days, and only events the rollup has counted. The prune horizon moves
    first, under the rollup's lock, so that no run recomputes a day being pruned.
    The hours' samples go with the events. Returns how many events were deleted.
    """
    now = now or timezone.now()
    cutoff = _day(now - timedelta(days=settings.USAGE_RETENTION_DAYS))
    with transaction.atomic():
        state = (
            RollupState.objects.select_for_update(skip_locked=True)
            .filter(rebuilt_at__isnull=False)
            .first()
        )
        if state is None:
            return 0  # never rolled up, or a run is under way: the next prune deletes
        if state.pruned_before is None or state.pruned_before < cutoff:
            state.pruned_before = cutoff
            state.save(update_fields=["pruned_before"])
    old = UsageEvent.objects.filter(created_at__lt=cutoff, id__lte=state.rolled_id)
    deleted = _delete_in_batches(old, batch_size)
    _delete_in_batches(UsageSample.objects.filter(bucket_start__lt=cutoff), batch_size)
    return deleted


def _delete_in_batches(queryset, batch_size: int) -> int:
    """Delete in short transactions of ``batch_size`` rows each (no long lock, no huge WAL)."""
    deleted = 0
    while True:
        ids = list(queryset.values_list("id", flat=True).order_by()[:batch_size])
        if not ids:
            return deleted
        deleted += queryset.model.objects.filter(id__in=ids).delete()[0]


def rollup_totals(rows) -> dict[str, int]:
    """Sums of a rollup queryset, for tests and the dashboard."""
    totals = defaultdict(int)
    for row in rows:
        for name in SUMS:
            totals[name] += getattr(row, name)
    return dict(totals)
