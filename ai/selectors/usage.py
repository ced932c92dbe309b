"""Usage reports from the rollups: what a user may see, summaries, the admin dashboard."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from accounts.models import APIKey, User

from ..models import AIModel

USAGE_GROUPS = ("model", "user", "org", "key", "day", "hour")


def usage_scope_filter(user: User):
    """What usage a user may see: their own, their admin orgs', or everything for staff."""
    from django.db.models import Q

    from orgs.models import Membership, Role

    if user.is_staff:
        return Q()
    admin_orgs = Membership.objects.filter(
        user=user, role__in=[Role.OWNER, Role.ADMIN]
    ).values_list("organisation_id", flat=True)
    return Q(user_id=user.pk) | Q(organisation_id__in=list(admin_orgs))


def usage_summary(*, user: User, start: datetime, end: datetime, group_by: str) -> list[dict]:
    """Usage from rollups between ``start`` and ``end``, grouped, within the user's scope."""
    from collections import defaultdict

    from orgs.models import Organisation

    from ..models import RollupPeriod, UsageRollup

    period = RollupPeriod.DAY if group_by == "day" else RollupPeriod.HOUR
    rows = UsageRollup.objects.filter(
        usage_scope_filter(user), period=period, bucket_start__gte=start, bucket_start__lt=end
    )
    field = {
        "model": "model_id",
        "user": "user_id",
        "org": "organisation_id",
        "key": "api_key_id",
    }.get(group_by)
    totals: dict = defaultdict(lambda: defaultdict(int))
    for row in rows:
        group = getattr(row, field) if field else row.bucket_start
        bucket = totals[group]
        for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "images"):
            bucket[name] += getattr(row, name)
        bucket["cost"] += row.cost
    names = {
        "model": lambda ids: dict(AIModel.objects.filter(pk__in=ids).values_list("pk", "name")),
        "user": lambda ids: dict(User.objects.filter(pk__in=ids).values_list("pk", "username")),
        "org": lambda ids: dict(Organisation.objects.filter(pk__in=ids).values_list("pk", "slug")),
        "key": lambda ids: dict(APIKey.objects.filter(pk__in=ids).values_list("pk", "prefix")),
    }.get(group_by, lambda ids: {})(list(totals))
    data = []
    for group, sums in sorted(totals.items(), key=lambda item: str(item[0])):
        entry = {"group": group.isoformat() if isinstance(group, datetime) else group or None}
        if field:
            entry["name"] = names.get(group)
        entry.update(sums)
        entry["total_tokens"] = sums["prompt_tokens"] + sums["completion_tokens"]
        entry["cost"] = str(sums["cost"])
        data.append(entry)
    return data


def dashboard_data(*, days: int = 14, now: datetime | None = None) -> dict:
    """Daily series and top users, organisations and models from rollups, for the admin."""
    from collections import defaultdict
    from datetime import timedelta

    from orgs.models import Organisation

    from ..models import RollupPeriod, UsageRollup

    now = now or timezone.now()
    first = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = UsageRollup.objects.filter(period=RollupPeriod.DAY, bucket_start__gte=first)
    labels = [(first + timedelta(days=i)).date().isoformat() for i in range(days)]
    series = {name: dict.fromkeys(labels, 0) for name in ("requests", "tokens", "cost")}
    tops = {
        "user_id": defaultdict(Decimal),
        "organisation_id": defaultdict(Decimal),
        "model_id": defaultdict(Decimal),
    }
    requests_by = {dim: defaultdict(int) for dim in tops}
    for row in rows:
        label = row.bucket_start.date().isoformat()
        series["requests"][label] += row.requests
        series["tokens"][label] += row.prompt_tokens + row.completion_tokens
        series["cost"][label] += float(row.cost)
        for dim in tops:
            if getattr(row, dim):
                tops[dim][getattr(row, dim)] += row.cost
                requests_by[dim][getattr(row, dim)] += row.requests
    names = {
        "user_id": dict(User.objects.values_list("pk", "username")),
        "organisation_id": dict(Organisation.objects.values_list("pk", "name")),
        "model_id": dict(AIModel.objects.values_list("pk", "name")),
    }

    def top(dim):
        ranked = sorted(tops[dim], key=lambda i: (tops[dim][i], requests_by[dim][i]), reverse=True)
        return [
            {
                "name": names[dim].get(i, f"#{i} (deleted)"),
                "requests": requests_by[dim][i],
                "cost": str(tops[dim][i]),
            }
            for i in ranked[:10]
        ]

    return {
        "labels": labels,
        "requests": list(series["requests"].values()),
        "tokens": list(series["tokens"].values()),
        "cost": [round(v, 6) for v in series["cost"].values()],
        "top_users": top("user_id"),
        "top_orgs": top("organisation_id"),
        "top_models": top("model_id"),
        "totals": {
            "requests": sum(series["requests"].values()),
            "tokens": sum(series["tokens"].values()),
            "cost": round(sum(series["cost"].values()), 6),
        },
    }
