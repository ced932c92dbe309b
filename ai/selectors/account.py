"""Reads for the end user's own account pages: their usage by day and model, and what is
left of each limit of their links, counted as the gateway counts it.

Unlike ``usage_summary`` (which also shows an org admin their organisations' usage), these
are the signed-in user's own rows only: those of their keys and of their session.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from accounts.models import APIKey, User
from accounts.selectors import key_info_of
from orgs.services import credits
from panel import redis as sb_redis

from ..gateway.reservations import COST, METRIC_NAMES, Plans
from ..models import AIModel, LimitCounter, RollupPeriod, UsageRollup
from .snapshots import usable_links, user_info_load
from .usage import UsageTotals


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """A user's usage over whole UTC days: per day, per model and per (day, model)."""

    days: tuple[date, ...]
    daily: dict[date, UsageTotals]
    by_model: dict[str, UsageTotals]
    rows: tuple[tuple[date, str, UsageTotals], ...]  # (day, model name, totals), newest first
    totals: UsageTotals


def own_usage(*, user: User, start: datetime, end: datetime | None = None) -> DailyUsage:
    """The user's own usage from the daily rollups, from ``start``'s day to ``end`` (now)."""
    end = end or timezone.now()
    first = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = UsageRollup.objects.filter(
        user_id=user.pk, period=RollupPeriod.DAY, bucket_start__gte=first, bucket_start__lt=end
    )
    daily: dict[date, UsageTotals] = defaultdict(UsageTotals)
    cells: dict[tuple[date, int], UsageTotals] = defaultdict(UsageTotals)
    per_model: dict[int, UsageTotals] = defaultdict(UsageTotals)
    totals = UsageTotals()
    for row in rows:
        day = row.bucket_start.astimezone(UTC).date()
        for sums in (daily[day], cells[(day, row.model_id)], per_model[row.model_id], totals):
            sums.add(row)
    ids = {model_id for _, model_id in cells}
    names = dict(AIModel.objects.filter(pk__in=ids).values_list("pk", "name")) if ids else {}

    def name(model_id: int) -> str:
        return names.get(model_id, f"deleted model {model_id}")

    table = [(day, name(model_id), sums) for (day, model_id), sums in sorted(cells.items())]
    by_model = {name(model_id): sums for model_id, sums in per_model.items()}
    count = (end.astimezone(UTC).date() - first.date()).days + 1
    return DailyUsage(
        days=tuple(first.date() + timedelta(days=i) for i in range(count)),
        daily=dict(daily),
        by_model=dict(sorted(by_model.items())),
        rows=tuple(reversed(table)),
        totals=totals,
    )


@dataclass(frozen=True, slots=True)
class LimitLeft:
    """One limit of a link in its current window: its cap, what is used, what is left."""

    name: str  # the link's limit field, e.g. tokens_per_day
    metric: str  # requests, tokens or cost
    limit: int | Decimal
    used: int | Decimal
    remaining: int | Decimal
    resets_at: datetime

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


@dataclass(frozen=True, slots=True)
class LinkQuota:
    """A link the user may use now, its model, whose it is and its limits' state."""

    link_id: int
    model_name: str
    owner: str  # "you" or the organisation's name
    is_wallet_billed: bool
    limits: tuple[LimitLeft, ...]


def _counter_values(keys: list[str]) -> dict[str, int]:
    """The gateway's running counters: in Redis when it is configured, else the database's."""
    if not keys:
        return {}
    if sb_redis.is_configured():
        values = sb_redis.sync_client().mget(keys)
        return {key: int(value or 0) for key, value in zip(keys, values, strict=True)}
    now = timezone.now()
    rows = LimitCounter.objects.filter(key__in=keys, expires_at__gt=now)
    return dict(rows.values_list("key", "value"))


def _amount(metric: int, micro: int) -> int | Decimal:
    """A counter's amount as shown: credits without trailing zeros (10, not 1E+1)."""
    if metric != COST:
        return micro
    amount = credits(micro)
    return amount.quantize(Decimal(1)) if amount == amount.to_integral() else amount.normalize()


def _limits_left(plan, values: dict[str, int]) -> tuple[LimitLeft, ...]:
    limits = []
    for limit in plan.limits:
        used = min(values.get(limit.key, 0), limit.limit)
        limits.append(
            LimitLeft(
                name=limit.label.replace(" ", "_"),  # the limit field, as the gateway labels it
                metric=METRIC_NAMES[limit.metric],
                limit=_amount(limit.metric, limit.limit),
                used=_amount(limit.metric, used),
                remaining=_amount(limit.metric, limit.limit - used),
                resets_at=datetime.fromtimestamp(limit.reset_at, UTC),
            )
        )
    return tuple(limits)


def own_quota(*, user: User) -> list[LinkQuota]:
    """Each link the user may use now with what is left of its limits in their windows.

    The windows and counters are the gateway's own (``reservations.Plans``): a fresh plan,
    so the request path's shared one is never touched from a page's thread.
    """
    info = user_info_load(user.pk)
    if info is None:
        return []
    links = usable_links(info, None)
    plans, now = Plans(), time.time()
    planned = [(link, plans.get(link, None, now)) for link in links]
    values = _counter_values([limit.key for _, plan in planned for limit in plan.limits])
    model_ids = {link.model_id for link in links}
    names = dict(AIModel.objects.filter(pk__in=model_ids).values_list("pk", "name"))
    org_names = dict(user.memberships.values_list("organisation_id", "organisation__name"))
    quotas = []
    for link, plan in planned:
        owner = "you" if link.user_id else org_names.get(link.organisation_id, "organisation")
        quotas.append(
            LinkQuota(
                link_id=link.id,
                model_name=names.get(link.model_id, f"model {link.model_id}"),
                owner=owner,
                is_wallet_billed=link.is_wallet_billed,
                limits=_limits_left(plan, values),
            )
        )
    return quotas


@dataclass(frozen=True, slots=True)
class KeyQuota:
    """A live key of the user with limits of its own, and what is left of them."""

    key_id: int
    name: str
    prefix: str
    limits: tuple[LimitLeft, ...]


@dataclass(frozen=True, slots=True)
class _NoLink:
    """A link without limits, so that a plan holds a key's own limits only."""

    id: int = 0
    limits: dict = field(default_factory=dict)
    is_wallet_billed: bool = False
    wallet_id: None = None


def own_key_quota(*, user: User) -> list[KeyQuota]:
    """The user's live keys with limits of their own, and what is left in their windows."""
    keys = APIKey.objects.filter(user=user, is_revoked=False).filter(
        Q(requests_per_minute__isnull=False) | Q(cost_per_month__isnull=False)
    )
    keys = [k for k in keys.prefetch_related("allowed_models", "instances") if not k.is_expired]
    plans, moment, link = Plans(), time.time(), _NoLink()
    planned = [(key, plans.get(link, key_info_of(key), moment)) for key in keys]
    values = _counter_values([limit.key for _, plan in planned for limit in plan.limits])
    return [
        KeyQuota(key_id=key.pk, name=key.name, prefix=key.prefix, limits=_limits_left(plan, values))
        for key, plan in planned
    ]
