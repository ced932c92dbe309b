"""Health of models and deployments, from their upstreams' last probes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count

from ..models import AIModel, HealthCheck, HealthStatus, Instance, InstanceStatus, Upstream

# Kept for importers of the old module; HealthStatus.best() is the rule.
STATUS_ORDER = HealthStatus.best_first()

_INSTANCE_HEALTH = {
    InstanceStatus.STARTING: HealthStatus.STARTING,
    InstanceStatus.RESTARTING: HealthStatus.STARTING,
    InstanceStatus.WAITING: HealthStatus.STARTING,
    InstanceStatus.DRAINING: HealthStatus.UNHEALTHY,
    InstanceStatus.STOPPED: HealthStatus.UNHEALTHY,
    InstanceStatus.FAILED: HealthStatus.UNHEALTHY,
}


def effective_health(health_status: str, instance_status: str | None) -> str:
    """An upstream's health: its last probe's, unless its instance is not running
    (starting while it starts or restarts, unhealthy while stopped or failed)."""
    if instance_status is None:
        return health_status
    return _INSTANCE_HEALTH.get(instance_status, health_status)


def upstream_health(upstream: Upstream) -> str:
    """``effective_health`` of an upstream row; select its instance with it."""
    instance = upstream.instance if upstream.instance_id else None
    return effective_health(upstream.health_status, instance.status if instance else None)


def model_statuses() -> dict[int, str]:
    """Each model's health: the best of its enabled upstreams' (unknown without any)."""
    statuses = defaultdict(list)
    for model_id, status, instance_status in Upstream.objects.filter(is_enabled=True).values_list(
        "model_id", "health_status", "instance__status"
    ):
        statuses[model_id].append(effective_health(status, instance_status))
    return {
        pk: HealthStatus.best(statuses[pk]) for pk in AIModel.objects.values_list("pk", flat=True)
    }


def instance_counts() -> dict[str, int]:
    """How many instances are in each status (every status, zeros included)."""
    counts = dict.fromkeys(InstanceStatus.values, 0)
    rows = Instance.objects.order_by().values_list("status").annotate(count=Count("pk"))
    for status, count in rows:
        counts[status] = count
    return counts


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
    upstreams = list(
        Upstream.objects.filter(model_id=model_id, is_enabled=True).select_related("instance")
    )
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
    statuses = {u.name: upstream_health(u) for u in upstreams}
    return DeploymentHealth(
        status=HealthStatus.best(statuses.values()),
        upstream_statuses=statuses,
        is_model_active=AIModel.objects.filter(pk=model_id, is_active=True).exists(),
        response_time_ms=latest,
        last_checked_at=max(checked, default=None),
    )
