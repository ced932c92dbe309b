"""The admin's dashboards from the rollups: the home page's last 24 h and the usage page.

Every read is a grouped query over rollup rows (a bounded number of queries,
whatever the data). A bucket's latency percentiles are exact when one rollup row
covers it; when several are merged (several users, models...) they are the mean of
the rows' percentiles weighted by their successful requests: an approximation, said
so on the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import F, FloatField, Q, Sum
from django.utils import timezone

from accounts.models import APIKey, User
from orgs.models import Organisation

from ..models import (
    AIModel,
    HealthStatus,
    Instance,
    InstanceStatus,
    RollupPeriod,
    Upstream,
    UsageRollup,
)

PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
PERIODS["90d"] = timedelta(days=90)
TIMINGS = ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms")
# Filter name -> (rollup column, model, name field).
DIMENSIONS = {
    "user": ("user_id", User, "username"),
    "organisation": ("organisation_id", Organisation, "name"),
    "api_key": ("api_key_id", APIKey, "prefix"),
    "model": ("model_id", AIModel, "name"),
}


@dataclass(slots=True)
class Bucket:
    """Sums and (weighted) percentiles of one time bucket, or of a whole window."""

    start: datetime | None = None
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    timings: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(TIMINGS))

    @property
    def cost_text(self) -> str:
        """The spend without trailing zeros: 0.75, not 0.750000."""
        text = f"{self.cost:f}"
        return text.rstrip("0").rstrip(".") if "." in text else text

    @property
    def error_rate(self) -> float | None:
        return round(100 * self.errors / self.requests, 2) if self.requests else None


@dataclass(frozen=True, slots=True)
class Ranked:
    """A user, organisation, key or model among the top ones; name None once deleted."""

    id: int
    name: str | None
    requests: int
    cost: Decimal


def _aggregates() -> dict:
    ok = F("requests") - F("errors")
    sums = {
        "n_requests": Sum("requests"),
        "n_errors": Sum("errors"),
        "n_tokens": Sum(F("prompt_tokens") + F("completion_tokens")),
        "n_cost": Sum("cost"),
    }
    for name in TIMINGS:
        sums[f"w_{name}"] = Sum(F(name) * ok, output_field=FloatField())
        sums[f"d_{name}"] = Sum(ok, filter=Q(**{f"{name}__isnull": False}))
    return sums


def _bucket(row: dict, start: datetime | None = None) -> Bucket:
    timings = {}
    for name in TIMINGS:
        weight = row[f"d_{name}"]
        timings[name] = round(row[f"w_{name}"] / weight, 1) if weight else None
    return Bucket(
        start=start,
        requests=row["n_requests"] or 0,
        errors=row["n_errors"] or 0,
        tokens=row["n_tokens"] or 0,
        cost=row["n_cost"] or Decimal(0),
        timings=timings,
    )


def rollup_rows(*, period: str, start: datetime, filters: dict[str, int] | None = None):
    """Rollup rows of ``period`` from ``start``, restricted by ids of the DIMENSIONS."""
    where = {DIMENSIONS[name][0]: value for name, value in (filters or {}).items()}
    return UsageRollup.objects.filter(period=period, bucket_start__gte=start, **where)


def window_totals(rows) -> Bucket:
    return _bucket(rows.aggregate(**_aggregates()))


def series(rows, *, period: str, start: datetime, end: datetime) -> list[Bucket]:
    """One Bucket per hour or day from ``start`` to ``end``; an empty bucket has zeros."""
    found = {
        row["bucket_start"]: _bucket(row, row["bucket_start"])
        for row in rows.values("bucket_start").annotate(**_aggregates()).order_by()
    }
    step = timedelta(hours=1) if period == RollupPeriod.HOUR else timedelta(days=1)
    buckets, moment = [], start
    while moment <= end:
        buckets.append(found.get(moment) or Bucket(start=moment))
        moment += step
    return buckets


def ranked(rows, dimension: str, *, top: int = 5) -> list[Ranked]:
    """The ``top`` ids of a dimension by spend, then requests, named."""
    column, model, name_field = DIMENSIONS[dimension]
    best = list(
        rows.exclude(**{column: 0})
        .values(column)
        .annotate(n_requests=Sum("requests"), n_cost=Sum("cost"))
        .order_by("-n_cost", "-n_requests", column)[:top]
    )
    ids = [row[column] for row in best]
    names = dict(model.objects.filter(pk__in=ids).values_list("pk", name_field)) if ids else {}
    return [
        Ranked(id=i, name=names.get(i), requests=row["n_requests"], cost=row["n_cost"])
        for i, row in zip(ids, best, strict=True)
    ]


def names_of(filters: dict[str, int]) -> dict[str, str | None]:
    """What each filter's id names (None once deleted): one query per filter given."""
    named = {}
    for name, value in filters.items():
        _, model, name_field = DIMENSIONS[name]
        named[name] = model.objects.filter(pk=value).values_list(name_field, flat=True).first()
    return named


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def day_start(moment: datetime) -> datetime:
    return hour_start(moment).replace(hour=0)


@dataclass(frozen=True, slots=True)
class HomeDashboard:
    """The admin home's last 24 h, tops, unhealthy upstreams and running instances."""

    since: datetime
    totals: Bucket
    top_models: list[Ranked]
    top_users: list[Ranked]
    top_orgs: list[Ranked]
    unhealthy_upstreams: list[Upstream]
    running_instances: list[Instance]
    running_count: int
    # (upstream, "open" or "half-open") as the gateway sees them: shared with Redis, else
    # in this process (router.SCOPE_*, in breaker_scope); None while Redis is unreachable.
    open_breakers: list[tuple[Upstream, str]] | None = None
    breaker_scope: str = ""


def home_dashboard(*, now: datetime | None = None, top: int = 5) -> HomeDashboard:
    """From the hourly rollups of the last 24 h (the current hour included); at most 10 queries."""
    now = now or timezone.now()
    since = hour_start(now) - timedelta(hours=23)
    rows = rollup_rows(period=RollupPeriod.HOUR, start=since)
    running = Instance.objects.filter(status=InstanceStatus.RUNNING).order_by("name")
    breakers = _breakers()
    return HomeDashboard(
        since=since,
        totals=window_totals(rows),
        top_models=ranked(rows, "model", top=top),
        top_users=ranked(rows, "user", top=top),
        top_orgs=ranked(rows, "organisation", top=top),
        unhealthy_upstreams=list(
            Upstream.objects.filter(is_enabled=True, health_status=HealthStatus.UNHEALTHY)
            .select_related("model")
            .order_by("model__name", "name")[:20]
        ),
        running_instances=list(running.only("name", "backend", "status")[:20]),
        running_count=running.count(),
        open_breakers=None if breakers is None else _open_breakers(breakers.open_until),
        breaker_scope=breakers.scope if breakers else "",
    )


def _breakers():
    """The breakers the gateway keeps: shared with Redis, else in this process."""
    from ..gateway import router  # the gateway imports the selectors

    return router.breakers_read()


def _open_breakers(open_until: dict[int, float]) -> list[tuple[Upstream, str]]:
    """Upstreams whose breaker is not closed, as the gateway sees it (one query)."""
    from ..gateway import router

    if not open_until:
        return []
    upstreams = Upstream.objects.filter(pk__in=open_until).select_related("model")
    found = [(u, router.breaker_state(open_until[u.pk])) for u in upstreams[:50]]
    return sorted(
        ((u, state) for u, state in found if state != router.BREAKER_CLOSED),
        key=lambda pair: (pair[0].model.name, pair[0].name),
    )


# The usage page's table (and its CSV): newest first, at most this many rows.
TABLE_ROWS = 2000


@dataclass(frozen=True, slots=True)
class TableRow:
    """One bucket's usage of one model."""

    model_id: int
    model: str | None
    usage: Bucket


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The usage page: the window, its buckets, totals, tops, table and what filters name."""

    period: str
    view: str
    start: datetime
    buckets: list[Bucket]
    totals: Bucket
    table: list[TableRow]
    truncated: bool
    top_models: list[Ranked]
    top_users: list[Ranked]
    top_orgs: list[Ranked]
    top_keys: list[Ranked]
    filter_names: dict[str, str | None]


def usage_report(
    *, period: str, view: str, filters: dict[str, int], now: datetime | None = None
) -> UsageReport:
    """``period`` a PERIODS key, ``view`` "hour" or "day"; at most 14 queries."""
    now = now or timezone.now()
    if view == RollupPeriod.HOUR:
        end = hour_start(now)
        start = end - PERIODS[period] + timedelta(hours=1)
    else:
        end = day_start(now)
        start = end - PERIODS[period] + timedelta(days=1)
        if period == "24h":  # yesterday and today: the days the last 24 h touch
            start = end - timedelta(days=1)
    rows = rollup_rows(period=view, start=start, filters=filters)
    table = list(
        rows.values("bucket_start", "model_id")
        .annotate(**_aggregates())
        .order_by("-bucket_start", "model_id")[: TABLE_ROWS + 1]
    )
    ids = {row["model_id"] for row in table}
    names = dict(AIModel.objects.filter(pk__in=ids).values_list("pk", "name")) if ids else {}
    return UsageReport(
        period=period,
        view=view,
        start=start,
        buckets=series(rows, period=view, start=start, end=end),
        totals=window_totals(rows),
        table=[
            TableRow(row["model_id"], names.get(row["model_id"]), _bucket(row, row["bucket_start"]))
            for row in table[:TABLE_ROWS]
        ],
        truncated=len(table) > TABLE_ROWS,
        top_models=ranked(rows, "model"),
        top_users=ranked(rows, "user"),
        top_orgs=ranked(rows, "organisation"),
        top_keys=ranked(rows, "api_key"),
        filter_names=names_of(filters),
    )
