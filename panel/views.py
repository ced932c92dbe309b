"""Site status for people and load balancers: /api/status, /healthz, /readyz."""

from __future__ import annotations

from datetime import timedelta
from importlib import metadata

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone

from panel import redis as sb_redis
from panel.db import run_sync

from .models import Heartbeat


def version() -> str:
    try:
        return metadata.version("switchboard")
    except metadata.PackageNotFoundError:
        return "unknown"


def _database_reachable() -> bool:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


async def _redis_reachable() -> bool | None:
    if not sb_redis.is_configured():
        return None
    try:
        return bool(await sb_redis.async_client().ping())
    except Exception:
        return False


async def healthz(request):
    """Liveness: the process answers; no I/O."""
    return JsonResponse({"status": "ok"})


async def readyz(request):
    """Readiness: the database (and Redis, when configured) answer."""
    database = await run_sync(_database_reachable)
    redis_ok = await _redis_reachable()
    ready = database and redis_ok is not False
    body = {"ready": ready, "database": database, "redis": redis_ok}
    return JsonResponse(body, status=200 if ready else 503)


def _status_snapshot() -> dict:
    from ai.models import HealthStatus
    from ai.selectors import instance_counts, model_statuses

    heartbeat = Heartbeat.objects.filter(name="beat").first()
    fresh = timedelta(seconds=3 * settings.CELERY_HEARTBEAT_INTERVAL)
    alive = heartbeat is not None and heartbeat.beat_at > timezone.now() - fresh
    counts = dict.fromkeys(HealthStatus.values, 0)
    for status in model_statuses().values():
        counts[status] += 1
    instances = instance_counts()
    return {
        "celery": {
            "beat_last_run": heartbeat.beat_at.isoformat() if heartbeat else None,
            # Beat schedules the heartbeat and a worker runs it: fresh means both are up.
            "beat_and_worker_alive": alive,
        },
        "models": {"total": sum(counts.values()), "by_status": counts},
        "instances": {"total": sum(instances.values()), "by_status": instances},
    }


async def api_status(request):
    """Gateway status (seed 002): no secrets, no upstream addresses."""
    database = await run_sync(_database_reachable)
    redis_ok = await _redis_reachable()
    body = {
        "status": "ok",
        "version": version(),
        "time": timezone.now().isoformat(),
        "database": {"reachable": database},
        "redis": {"configured": sb_redis.is_configured(), "reachable": redis_ok},
    }
    if database:
        body.update(await run_sync(_status_snapshot))
    if not database or redis_ok is False:
        body["status"] = "degraded"
    return JsonResponse(body, status=200 if database else 503)


def metrics(request):
    """Prometheus metrics, behind METRICS_TOKEN; 404 when no token is set (metrics off)."""
    import hmac
    import os

    from django.http import HttpResponse, HttpResponseNotFound
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )
    from prometheus_client import REGISTRY as DEFAULT_REGISTRY

    from ai.instances.metrics import INSTANCES  # registered on the default registry once

    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponseNotFound("metrics are off")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        response = JsonResponse({"error": "a valid metrics bearer token is required"}, status=401)
        response["WWW-Authenticate"] = "Bearer"
        return response
    registry = DEFAULT_REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        # Read from the database by the process that answers: not summed over processes.
        registry.register(INSTANCES)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
