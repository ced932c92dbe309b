"""Columns shared by admin lists: status badges (health, breaker) and recent usage."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from .gateway import router
from .models import HealthStatus
from .selectors.recent_usage import RECENT_USAGE_DAYS

# A symbol and a word with each colour, so that a status reads without its colour.
HEALTH_SYMBOLS = {
    HealthStatus.HEALTHY: "✓",
    HealthStatus.DEGRADED: "!",
    HealthStatus.UNHEALTHY: "✗",
    HealthStatus.STARTING: "…",
    HealthStatus.UNKNOWN: "?",
}
BREAKER_SYMBOLS = {
    router.BREAKER_CLOSED: "✓",
    router.BREAKER_HALF_OPEN: "!",
    router.BREAKER_OPENED: "✗",
}
# The stylesheet of the badges, for a ModelAdmin's Media.
STATUS_CSS = {"all": ["ai/admin_status.css"]}


def status_badge(kind: str, symbol: str, text: str) -> str:
    return format_html('<span class="sb-status sb-status--{}">{} {}</span>', kind, symbol, text)


def health_badge(status: str) -> str:
    known = status in HealthStatus.values
    return status_badge(
        status if known else HealthStatus.UNKNOWN,
        HEALTH_SYMBOLS.get(status, "?"),
        HealthStatus(status).label if known else status,
    )


def breaker_badge(state: str, detail: str = "") -> str:
    text = f"{state} ({detail})" if detail else state
    return status_badge(state, BREAKER_SYMBOLS.get(state, "?"), text)


class RecentUsageColumns:
    """``recent_requests`` and ``recent_cost`` columns of a ModelAdmin whose queryset is
    annotated with ``recent_usage_annotations``."""

    @admin.display(description=f"requests ({RECENT_USAGE_DAYS} d)", ordering="recent_requests")
    def recent_requests(self, obj):
        return obj.recent_requests

    @admin.display(description=f"spend ({RECENT_USAGE_DAYS} d)", ordering="recent_cost")
    def recent_cost(self, obj):
        return f"{obj.recent_cost.normalize():f}" if obj.recent_cost else "0"
