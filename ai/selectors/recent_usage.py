"""Recent usage per row of an admin list: requests and cost over the last days, from rollups."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.db.models import DecimalField, IntegerField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import RollupPeriod, UsageRollup

RECENT_USAGE_DAYS = 30


def recent_usage_annotations(id_column: str, *, days: int = RECENT_USAGE_DAYS, now=None) -> dict:
    """``recent_requests`` and ``recent_cost`` of each row over the last ``days`` days.

    ``id_column`` is the rollup column holding the row's id (``api_key_id``,
    ``link_id``). Daily rollups from the start of the first day, as the usage
    dashboard reads them; correlated subqueries, so a list page stays one query.
    """
    now = now or timezone.now()
    first = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = (
        UsageRollup.objects.filter(
            period=RollupPeriod.DAY, bucket_start__gte=first, **{id_column: OuterRef("pk")}
        )
        .order_by()
        .values(id_column)
    )

    def total(field: str, output):
        return Subquery(rows.annotate(total=Sum(field)).values("total")[:1], output_field=output)

    money = DecimalField(max_digits=20, decimal_places=6)
    return {
        "recent_requests": Coalesce(total("requests", IntegerField()), Value(0)),
        "recent_cost": Coalesce(total("cost", money), Value(Decimal("0")), output_field=money),
    }
