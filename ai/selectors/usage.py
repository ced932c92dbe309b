"""Usage reports from the rollups: what a user may see and their summaries.

They return values (dataclasses of ints, Decimals and datetimes); the API view turns
them into its JSON. The admin's dashboards read ai/selectors/dashboard.py.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q

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
