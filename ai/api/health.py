"""GET /api/deployments/{id}/health (seed 001), for models the caller may use."""

from __future__ import annotations

from django.utils import timezone

from accounts.models import Permission
from panel.db import run_sync
from panel.errors import ErrorCode, NotFound

from ..gateway.resolve import caller_get
from ..models import HealthStatus
from ..selectors import models_for_caller, registry_get
from ..selectors.health import DeploymentHealth, deployment_health
from .base import ai_route, json_response

# Seed 001's name for an upstream's state.
SERVICE_STATE = {
    HealthStatus.HEALTHY: "running",
    HealthStatus.DEGRADED: "degraded",
    HealthStatus.UNHEALTHY: "down",
    HealthStatus.STARTING: "starting",
    HealthStatus.UNKNOWN: "unknown",
}


@ai_route(methods={"GET": Permission.READ})
async def deployment(request, identity, request_id, model_id: int, upstream_id: int | None = None):
    user = await caller_get(identity)
    visible = {m.id for m in models_for_caller(await registry_get(), user, identity.key)}
    health = None
    if model_id in visible:
        health = await run_sync(
            lambda: deployment_health(model_id=model_id, upstream_id=upstream_id)
        )
    if health is None:
        raise NotFound(
            "No deployment with this id is available to you.", code=ErrorCode.DEPLOYMENT_NOT_FOUND
        )
    return json_response(_seed_001(health))


def _seed_001(health: DeploymentHealth) -> dict:
    """Deployment health in seed 001's shape."""
    if health.is_model_active and HealthStatus.is_serving(health.status):
        deployment_status = "running"
    elif health.status == HealthStatus.STARTING:
        deployment_status = "starting"
    else:
        deployment_status = "stopped"
    checked = health.last_checked_at
    return {
        "status": health.status,
        "timestamp": timezone.now().isoformat(),
        "services": {name: SERVICE_STATE[s] for name, s in health.upstream_statuses.items()},
        "deployment_status": deployment_status,
        "response_time_ms": health.response_time_ms,
        "last_checked": checked.isoformat() if checked else None,
    }
