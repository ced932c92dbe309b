"""Usage reports from the rollups: what a user may see, summaries, the admin dashboard.

They return values (dataclasses of ints, Decimals and datetimes); the API view and
the admin page turn them into their JSON.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from accounts.models import APIKey, User
from orgs.models import Membership, Organisation, Role

from ..models import AIModel, RollupPeriod, UsageRollup

# The rollup column each id grouping reads, and how the group is named.
ID_GROUPS = {
    "model": ("model_id", AIModel, "name"),
    "user": ("user_id", User, "username"),
    "org": ("organisation_id", Organisation, "slug"),
    "key": ("api_key_id", APIKey, "prefix"),
}
TIME_GROUPS = ("day", "hour")
USAGE_GROUPS = (*ID_GROUPS, *TIME_GROUPS)
COUNTED = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "images",
)


@dataclass(slots=True)
class UsageTotals:
    """Sums over rollup rows."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0  # cache reads and writes included
    completion_tokens: int = 0  # reasoning included
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    cost: Decimal = Decimal(0)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, row: UsageRollup) -> None:
        for name in COUNTED:
            setattr(self, name, getattr(self, name) + getattr(row, name))
        self.cost += row.cost


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One group of a summary: an id (None for none) and its name, or a bucket's start."""

    group: int | datetime | None
    name: str | None
    totals: UsageTotals


def usage_scope_filter(user: User) -> Q:
    """What usage a user may see: their own, their admin orgs', or everything for staff."""
    if user.is_staff:
        return Q()
    admin_orgs = Membership.objects.filter(
        user=user, role__in=[Role.OWNER, Role.ADMIN]
    ).values_list("organisation_id", flat=True)
    return Q(user_id=user.pk) | Q(organisation_id__in=list(admin_orgs))


def usage_summary(*, user: User, start: datetime, end: datetime, group_by: str) -> list[UsageGroup]:
    """Usage from rollups between ``start`` and ``end``, grouped, within the user's scope."""
    period = RollupPeriod.DAY if group_by == "day" else RollupPeriod.HOUR
    rows = UsageRollup.objects.filter(
        usage_scope_filter(user), period=period, bucket_start__gte=start, bucket_start__lt=end
    )
    column, model, name_field = ID_GROUPS.get(group_by, (None, None, None))
    totals: dict = defaultdict(UsageTotals)
    for row in rows:
        totals[getattr(row, column) if column else row.bucket_start].add(row)
    names = {}
    if model is not None:
        names = dict(model.objects.filter(pk__in=list(totals)).values_list("pk", name_field))
    # An id of 0 in a rollup means none (no organisation, no key).
    return [
        UsageGroup(group=group or None, name=names.get(group), totals=sums)
        for group, sums in sorted(totals.items(), key=lambda item: str(item[0]))
    ]


# The rollup columns the dashboard ranks by cost, and how each is named.
SPENDERS = {
    "user_id": (User, "username"),
    "organisation_id": (Organisation, "name"),
    "model_id": (AIModel, "name"),
}


@dataclass(frozen=True, slots=True)
class TopUsage:
    """A user, organisation or model among the biggest spenders; name None once deleted."""

    id: int
    name: str | None
    requests: int
    cost: Decimal


@dataclass(frozen=True, slots=True)
class UsageDashboard:
    """The admin's usage page: every day of the window, the days with usage, the top lists."""

    days: tuple[date, ...]
    daily: dict[date, UsageTotals]
    top_users: tuple[TopUsage, ...]
    top_orgs: tuple[TopUsage, ...]
    top_models: tuple[TopUsage, ...]


def dashboard_data(*, days: int = 14, now: datetime | None = None, top: int = 10) -> UsageDashboard:
    """Daily totals and the ``top`` users, organisations and models by cost, from rollups."""
    now = now or timezone.now()
    first = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = UsageRollup.objects.filter(period=RollupPeriod.DAY, bucket_start__gte=first)
    daily: dict[date, UsageTotals] = defaultdict(UsageTotals)
    spenders = {column: defaultdict(UsageTotals) for column in SPENDERS}
    for row in rows:
        daily[row.bucket_start.date()].add(row)
        for column, by_id in spenders.items():
            if getattr(row, column):
                by_id[getattr(row, column)].add(row)

    def ranked(column: str) -> tuple[TopUsage, ...]:
        by_id = spenders[column]
        ids = sorted(by_id, key=lambda i: (by_id[i].cost, by_id[i].requests), reverse=True)[:top]
        model, name_field = SPENDERS[column]
        names = dict(model.objects.filter(pk__in=ids).values_list("pk", name_field))
        return tuple(
            TopUsage(id=i, name=names.get(i), requests=by_id[i].requests, cost=by_id[i].cost)
            for i in ids
        )

    return UsageDashboard(
        days=tuple((first + timedelta(days=i)).date() for i in range(days)),
        daily=dict(daily),
        top_users=ranked("user_id"),
        top_orgs=ranked("organisation_id"),
        top_models=ranked("model_id"),
    )
