"""GET /api/deployments/{id}/health (seed 001), for models the caller may use."""

from __future__ import annotations

from accounts.models import Permission
from panel.db import run_sync
from panel.errors import ErrorCode, NotFound

from ..gateway.resolve import caller_get
from ..selectors import deployment_health, models_for_caller, registry_get
from .base import ai_route, json_response


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
    return json_response(health)
