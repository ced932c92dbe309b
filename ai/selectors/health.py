"""Health of models and deployments, from their upstreams' last probes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

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


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """A model's (or one upstream's) health from the last probes of its enabled upstreams."""

    status: str  # HealthStatus: the best of the upstreams'
    upstream_statuses: dict[str, str]  # HealthStatus by upstream name
    is_model_active: bool
    response_time_ms: int | None  # of the latest successful probe
    last_checked_at: datetime | None


def deployment_health(*, model_id: int, upstream_id: int | None = None) -> DeploymentHealth | None:
    """The health of a model's deployment, or of one of its upstreams (None if not enabled)."""
    upstreams = list(Upstream.objects.filter(model_id=model_id, is_enabled=True))
    if upstream_id is not None:
        upstreams = [u for u in upstreams if u.pk == upstream_id]
        if not upstreams:
            return None
    latest = (
        HealthCheck.objects.filter(upstream__in=upstreams, is_success=True)
        .values_list("latency_ms", flat=True)
        .first()
    )
    checked = [u.last_checked_at for u in upstreams if u.last_checked_at]
    return DeploymentHealth(
        status=HealthStatus.best(u.health_status for u in upstreams),
        upstream_statuses={u.name: u.health_status for u in upstreams},
        is_model_active=AIModel.objects.filter(pk=model_id, is_active=True).exists(),
        response_time_ms=latest,
        last_checked_at=max(checked, default=None),
    )
