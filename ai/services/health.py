"""Upstream health checks: cheap probes, stored history, status transitions.

A failed probe (connection error, timeout, 4xx/5xx) makes an upstream
unhealthy at once, so the router stops sending it traffic within one
interval. A successful probe is healthy, or degraded when slower than
HEALTH_DEGRADED_LATENCY_MS or when one of the last HEALTH_RECENT_CHECKS
probes failed. Each due upstream is claimed with a compare-and-set on
``last_checked_at``, so however many workers run the task at once, each
upstream is probed once per interval. An instance's upstream is probed only
while the instance runs: a stopped one is not a failure (its health says so).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from panel import redis as sb_redis
from panel.localcache import bump_generation

from ..gateway.upstream import auth_headers
from ..instances.client import instance_base_url
from ..instances.nodes import instance_hosts
from ..models import ApiStyle, HealthCheck, HealthStatus, InstanceStatus, Upstream


@dataclass(slots=True)
class ProbeResult:
    is_success: bool
    latency_ms: int | None
    error: str = ""


def _base_url(upstream: Upstream, hosts: dict[str, str]) -> str | None:
    """Where to probe: the upstream's URL, or its instance's while it runs (else None)."""
    if upstream.instance_id is None:
        return upstream.base_url.rstrip("/")
    if upstream.instance.status != InstanceStatus.RUNNING:
        return None
    return instance_base_url(upstream.instance, hosts)


async def _probe(client: httpx.AsyncClient, upstream: Upstream, base: str) -> ProbeResult:
    headers = auth_headers(upstream.api_style, upstream.api_key)
    started = time.monotonic()
    try:
        if upstream.probe == "completion":
            body = {
                "model": upstream.upstream_model_id,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
            }
            # An Anthropic-style upstream is probed with a one-token message.
            path = "messages" if upstream.api_style == ApiStyle.ANTHROPIC else "chat/completions"
            response = await client.post(f"{base}/{path}", json=body, headers=headers)
        else:
            response = await client.get(f"{base}/models", headers=headers)
    except httpx.HTTPError as exc:
        return ProbeResult(False, None, f"{type(exc).__name__}: {exc}"[:300])
    latency = int((time.monotonic() - started) * 1000)
    if response.status_code >= 400:
        return ProbeResult(False, latency, f"HTTP {response.status_code}")
    return ProbeResult(True, latency)


async def _probe_all(targets: list[tuple[Upstream, str]]) -> list[ProbeResult]:
    timeout = httpx.Timeout(settings.HEALTH_PROBE_TIMEOUT)
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await asyncio.gather(*(_probe(client, u, base) for u, base in targets))


def _status_after(upstream: Upstream, result: ProbeResult) -> str:
    if not result.is_success:
        return HealthStatus.UNHEALTHY
    recent = HealthCheck.objects.filter(upstream=upstream).values_list("is_success", flat=True)[
        : settings.HEALTH_RECENT_CHECKS - 1
    ]
    slow = result.latency_ms is not None and result.latency_ms > settings.HEALTH_DEGRADED_LATENCY_MS
    return HealthStatus.DEGRADED if slow or not all(recent) else HealthStatus.HEALTHY


def _record(upstream: Upstream, result: ProbeResult, now) -> HealthCheck:
    status = _status_after(upstream, result)
    check = HealthCheck.objects.create(
        upstream=upstream,
        status=status,
        is_success=result.is_success,
        latency_ms=result.latency_ms,
        error=result.error,
        checked_at=now,
    )
    failures = 0 if result.is_success else upstream.consecutive_failures + 1
    # QuerySet.update: the router learns of it through the one bump below.
    Upstream.objects.filter(pk=upstream.pk).update(
        health_status=status,
        last_error=result.error or ("" if result.is_success else upstream.last_error),
        consecutive_failures=failures,
        last_checked_at=now,
    )
    if result.is_success and sb_redis.is_configured():
        from ..gateway.router import FAILS_KEY, OPEN_KEY

        sb_redis.sync_client().hdel(FAILS_KEY, upstream.pk)
        sb_redis.sync_client().hdel(OPEN_KEY, upstream.pk)
    return check


def _claim_due(now) -> list[Upstream]:
    """The enabled upstreams due for a probe, each claimed by this caller only."""
    default = settings.HEALTH_CHECK_INTERVAL
    claimed = []
    probed = Upstream.objects.filter(
        Q(instance__isnull=True) | Q(instance__status=InstanceStatus.RUNNING), is_enabled=True
    )
    for upstream in probed.select_related("model", "instance"):
        interval = timedelta(seconds=upstream.health_check_interval or default)
        previous = upstream.last_checked_at
        if previous is not None and previous > now - interval:
            continue
        unchanged = (
            Q(last_checked_at__isnull=True) if previous is None else Q(last_checked_at=previous)
        )
        # Compare-and-set: of several workers, only one moves the timestamp.
        if Upstream.objects.filter(unchanged, pk=upstream.pk).update(last_checked_at=now):
            claimed.append(upstream)
    return claimed


def upstreams_check(*, upstreams: list[Upstream] | None = None) -> list[HealthCheck]:
    """Probe the given upstreams now, or every one that is due; store and apply the results."""
    now = timezone.now()
    claimed = _claim_due(now) if upstreams is None else upstreams
    hosts = instance_hosts() if any(u.instance_id for u in claimed) else {}
    targets = [(u, base) for u in claimed if (base := _base_url(u, hosts)) is not None]
    if not targets:
        return []
    results = asyncio.run(_probe_all(targets))
    checks = [_record(u, r, now) for (u, _), r in zip(targets, results, strict=True)]
    # One invalidation per run: routers reload statuses and close breakers of
    # upstreams that answered after their breaker opened.
    bump_generation()
    return checks


def health_prune(*, now=None) -> int:
    """Delete probe history older than HEALTH_RETENTION_DAYS."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.HEALTH_RETENTION_DAYS)
    return HealthCheck.objects.filter(checked_at__lt=cutoff).delete()[0]
