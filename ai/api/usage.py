"""GET /api/ai/usage: usage from rollups, within the caller's scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from accounts.models import Permission, User
from panel.db import run_sync
from panel.errors import InvalidRequest

from ..gateway.resolve import caller_get
from ..selectors.usage import ID_GROUPS, USAGE_GROUPS, UsageGroup, usage_summary
from .base import ai_route, json_response


def _moment(value: str | None, name: str, default: datetime) -> datetime:
    if not value:
        return default
    try:
        parsed = parse_datetime(value)
        if parsed is None and (day := parse_date(value)) is not None:
            parsed = datetime(day.year, day.month, day.day)
    except ValueError:  # well formed but impossible, e.g. 2024-13-45
        parsed = None
    if parsed is None:
        raise InvalidRequest(f"'{name}' must be an ISO date or datetime.", param=name)
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


@ai_route(methods={"GET": Permission.READ})
async def usage(request, identity, request_id):
    now = timezone.now()
    end = _moment(request.GET.get("to"), "to", now)
    start = _moment(request.GET.get("from"), "from", end - timedelta(days=7))
    if start >= end:
        raise InvalidRequest("'from' must be before 'to'.", param="from")
    group_by = request.GET.get("group_by", "model")
    if group_by not in USAGE_GROUPS:
        raise InvalidRequest(
            f"'group_by' must be one of {', '.join(USAGE_GROUPS)}.", param="group_by"
        )
    await caller_get(identity)  # an inactive or deleted user is not authenticated
    user = await User.objects.aget(pk=identity.user_id)
    groups = await run_sync(
        lambda: usage_summary(user=user, start=start, end=end, group_by=group_by)
    )
    return json_response(
        {
            "object": "list",
            "group_by": group_by,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "data": [_entry(group, is_named=group_by in ID_GROUPS) for group in groups],
        }
    )


def _entry(group: UsageGroup, *, is_named: bool) -> dict:
    """One group as JSON: a bucket's start in ISO 8601, cost as a decimal string."""
    moment = isinstance(group.group, datetime)
    entry = {"group": group.group.isoformat() if moment else group.group}
    if is_named:
        entry["name"] = group.name
    sums = group.totals
    return entry | {
        "requests": sums.requests,
        "errors": sums.errors,
        "prompt_tokens": sums.prompt_tokens,
        "completion_tokens": sums.completion_tokens,
        "cache_read_tokens": sums.cache_read_tokens,
        "cache_write_tokens": sums.cache_write_tokens,
        "reasoning_tokens": sums.reasoning_tokens,
        "images": sums.images,
        "cost": str(sums.cost),
        "total_tokens": sums.total_tokens,
    }
