"""Health of models and deployments, from their upstreams' last probes."""

from __future__ import annotations

from collections import defaultdict

from django.utils import timezone

from ..models import AIModel, HealthCheck, HealthStatus, Upstream

# Kept for importers of the old module; HealthStatus.best() is the rule.
STATUS_ORDER = HealthStatus.best_first()


def model_statuses() -> dict[int, str]:
    """Each model's health: the best of its enabled upstreams' (unknown without any)."""
    statuses = defaultdict(list)
    for model_id, status in Upstream.objects.filter(is_enabled=True).values_list(
        "model_id", "health_status"
    ):
        statuses[model_id].append(status)
    return {
        pk: HealthStatus.best(statuses[pk]) for pk in AIModel.objects.values_list("pk", flat=True)
    }


SERVICE_STATE = {
    "healthy": "running",
    "degraded": "degraded",
    "unhealthy": "down",
    "starting": "starting",
    "unknown": "unknown",
}


def deployment_health(*, model_id: int, upstream_id: int | None = None) -> dict | None:
    """Seed 001's deployment health for a model, or one of its upstreams."""
    upstreams = list(Upstream.objects.filter(model_id=model_id, is_enabled=True))
    if upstream_id is not None:
        upstreams = [u for u in upstreams if u.pk == upstream_id]
        if not upstreams:
            return None
    status = HealthStatus.best(u.health_status for u in upstreams)
    latest = (
        HealthCheck.objects.filter(upstream__in=upstreams, is_success=True)
        .values_list("latency_ms", flat=True)
        .first()
    )
    checked = [u.last_checked_at for u in upstreams if u.last_checked_at]
    model_active = AIModel.objects.filter(pk=model_id, is_active=True).exists()
    running = model_active and HealthStatus.is_serving(status)
    return {
        "status": status,
        "timestamp": timezone.now().isoformat(),
        "services": {u.name: SERVICE_STATE[u.health_status] for u in upstreams},
        "deployment_status": "running"
        if running
        else ("starting" if status == HealthStatus.STARTING else "stopped"),
        "response_time_ms": latest,
        "last_checked": max(checked).isoformat() if checked else None,
    }
