"""Usage rollups and retention."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from panel.models import Heartbeat

from ..models import RollupPeriod, UsageEvent, UsageRollup, UsageStatus

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
# Latency percentiles are computed in Python over the window's successful events, so
# SQLite and PostgreSQL agree; the interpolation is PostgreSQL's percentile_cont. The
# cost stays bounded: one streamed pass (.iterator()) over four small columns of the
# events the sums already read, and at most PERCENTILE_SAMPLES values kept per bucket
# and grouping: exact up to that, a seeded reservoir sample (Algorithm R) past it.
PERCENTILE_SAMPLES = 5000
PERCENTILES = {"p50": 0.5, "p95": 0.95}


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _rollup_start(now: datetime, state: Heartbeat | None) -> datetime | None:
    lookback = timedelta(hours=settings.USAGE_ROLLUP_LOOKBACK_HOURS)
    if state is None:
        first = (
            UsageEvent.objects.order_by("created_at").values_list("created_at", flat=True).first()
        )
        return _day(first) if first else None
    # Reach back past the last run too, in case the task did not run for a while.
    return _day(min(now, state.beat_at) - lookback)


def usage_rollup(*, now: datetime | None = None) -> int:
    """Recompute hourly and daily rollups from raw events over the lookback window.

    Idempotent: each run replaces the buckets it covers with sums over the raw
    events, so a second run changes nothing and late events are counted by the
    next run. Returns the number of hourly rows written.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # One run at a time, whichever worker it is on: the state row is the lock.
        Heartbeat.objects.get_or_create(name=f"{ROLLUP_STATE}_lock", defaults={"beat_at": now})
        Heartbeat.objects.select_for_update().get(name=f"{ROLLUP_STATE}_lock")
        start = _rollup_start(now, Heartbeat.objects.filter(name=ROLLUP_STATE).first())
        if start is None:
            return 0
        hours = _hourly(start)
        days = _daily(hours)
        hour_samples, day_samples = _timings(start)
        _set_percentiles(hours, hour_samples)
        _set_percentiles(days, day_samples)
        UsageRollup.objects.filter(bucket_start__gte=start).delete()
        UsageRollup.objects.bulk_create(hours + days, batch_size=1000)
        Heartbeat.objects.update_or_create(name=ROLLUP_STATE, defaults={"beat_at": now})
    return len(hours)


def _hourly(start: datetime) -> list[UsageRollup]:
    rows = (
        UsageEvent.objects.filter(created_at__gte=start)
        .annotate(bucket=TruncHour("created_at"))
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


def _daily(hours: list[UsageRollup]) -> list[UsageRollup]:
    days: dict[tuple, UsageRollup] = {}
    for hour in hours:
        key = (_day(hour.bucket_start), *(getattr(hour, dim) for dim in DIMENSIONS))
        day = days.get(key)
        if day is None:
            day = days[key] = UsageRollup(
                period=RollupPeriod.DAY,
                bucket_start=key[0],
                **{dim: getattr(hour, dim) for dim in DIMENSIONS},
            )
        for name in SUMS:
            setattr(day, name, getattr(day, name) + getattr(hour, name))
    return list(days.values())


class _Reservoir:
    """Up to PERCENTILE_SAMPLES values of a stream, every value equally likely kept."""

    __slots__ = ("seen", "values")

    def __init__(self) -> None:
        self.seen = 0
        self.values: list[int] = []

    def add(self, value: int, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < PERCENTILE_SAMPLES:
            self.values.append(value)
        elif (slot := rng.randrange(self.seen)) < PERCENTILE_SAMPLES:
            self.values[slot] = value


def percentile(values: list[int], fraction: float) -> float | None:
    """The ``fraction`` percentile with linear interpolation (percentile_cont); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * fraction
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _timings(start: datetime) -> tuple[dict, dict]:
    """Latency and TTFT samples of successful events per hourly and daily rollup key."""
    rng = random.Random(0)  # seeded: a rerun over the same events gives the same rollups
    hours: dict[tuple, tuple[_Reservoir, _Reservoir]] = {}
    days: dict[tuple, tuple[_Reservoir, _Reservoir]] = {}
    rows = (
        UsageEvent.objects.filter(created_at__gte=start, status=UsageStatus.OK)
        .annotate(bucket=TruncHour("created_at"))
        .values_list("bucket", *DIMENSIONS, "latency_ms", "ttft_ms")
        .order_by()
    )
    for bucket, *ids, latency, ttft in rows.iterator(chunk_size=2000):
        ids = tuple(i or 0 for i in ids)
        for by_key, key in ((hours, (bucket, *ids)), (days, (_day(bucket), *ids))):
            samples = by_key.get(key)
            if samples is None:
                samples = by_key[key] = (_Reservoir(), _Reservoir())
            samples[0].add(latency, rng)
            if ttft is not None:
                samples[1].add(ttft, rng)
    return hours, days


def _set_percentiles(rollups: list[UsageRollup], samples: dict) -> None:
    for rollup in rollups:
        key = (rollup.bucket_start, *(getattr(rollup, dim) for dim in DIMENSIONS))
        latency, ttft = samples.get(key, (_Reservoir(), _Reservoir()))
        for name, fraction in PERCENTILES.items():
            setattr(rollup, f"latency_{name}_ms", percentile(latency.values, fraction))
            setattr(rollup, f"ttft_{name}_ms", percentile(ttft.values, fraction))


def usage_prune(*, now: datetime | None = None, batch_size: int = 5000) -> int:
    """Delete raw events past the retention setting, in batches; rollups are kept.

    Only events that a past rollup run has already counted are deleted.
    Returns how many were deleted.
    """
    now = now or timezone.now()
    state = Heartbeat.objects.filter(name=ROLLUP_STATE).first()
    if state is None:
        return 0
    cutoff = min(
        now - timedelta(days=settings.USAGE_RETENTION_DAYS),
        _day(state.beat_at - timedelta(hours=settings.USAGE_ROLLUP_LOOKBACK_HOURS)),
    )
    deleted = 0
    while True:
        ids = list(
            UsageEvent.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[
                :batch_size
            ]
        )
        if not ids:
            return deleted
        deleted += UsageEvent.objects.filter(id__in=ids).delete()[0]


def rollup_totals(rows) -> dict[str, int]:
    """Sums of a rollup queryset, for tests and the dashboard."""
    totals = defaultdict(int)
    for row in rows:
        for name in SUMS:
            totals[name] += getattr(row, name)
    return dict(totals)
