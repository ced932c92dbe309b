"""Health of models and deployments, from their upstreams' last probes."""

from __future__ import annotations

from django.utils import timezone

from ..models import AIModel

STATUS_ORDER = ("healthy", "degraded", "starting", "unknown", "unhealthy")


def model_statuses() -> dict[int, str]:
    """Each model's status: the best of its enabled upstreams (unknown without any)."""
    from ..models import Upstream

    best: dict[int, str] = {m: "unknown" for m in AIModel.objects.values_list("pk", flat=True)}
    seen: set[int] = set()
    for model_id, status in Upstream.objects.filter(is_enabled=True).values_list(
        "model_id", "health_status"
    ):
        if model_id not in seen or STATUS_ORDER.index(status) < STATUS_ORDER.index(best[model_id]):
            best[model_id] = status
            seen.add(model_id)
    return best


SERVICE_STATE = {
    "healthy": "running",
    "degraded": "degraded",
    "unhealthy": "down",
    "starting": "starting",
    "unknown": "unknown",
}


def deployment_health(*, model_id: int, upstream_id: int | None = None) -> dict | None:
    """Seed 001's deployment health for a model, or one of its upstreams."""
    from ..models import HealthCheck, Upstream

    upstreams = list(Upstream.objects.filter(model_id=model_id, is_enabled=True))
    if upstream_id is not None:
        upstreams = [u for u in upstreams if u.pk == upstream_id]
        if not upstreams:
            return None
    statuses = [u.health_status for u in upstreams] or ["unknown"]
    status = min(statuses, key=STATUS_ORDER.index)
    latest = (
        HealthCheck.objects.filter(upstream__in=upstreams, is_success=True)
        .values_list("latency_ms", flat=True)
        .first()
    )
    checked = [u.last_checked_at for u in upstreams if u.last_checked_at]
    model_active = AIModel.objects.filter(pk=model_id, is_active=True).exists()
    running = model_active and status in ("healthy", "degraded")
    return {
        "status": status,
        "timestamp": timezone.now().isoformat(),
        "services": {u.name: SERVICE_STATE[u.health_status] for u in upstreams},
        "deployment_status": "running"
        if running
        else ("starting" if status == "starting" else "stopped"),
        "response_time_ms": latest,
        "last_checked": max(checked).isoformat() if checked else None,
    }
