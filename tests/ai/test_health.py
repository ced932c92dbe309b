"""Upstream health checks, status endpoints and the router's use of them."""

import threading
from unittest import mock

import httpx
import pytest
from django.db import OperationalError

from ai.gateway import router
from ai.models import HealthCheck, HealthStatus, Upstream
from ai.services import health_prune, upstreams_check
from panel.celery import app as celery_app
from tests.ai.conftest import UPSTREAM_SECRET, make_model, session_client

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def _check(upstream):
    (check,) = upstreams_check(upstreams=[Upstream.objects.get(pk=upstream.pk)])
    upstream.refresh_from_db()
    return check


def _move(upstream, url):
    upstream.base_url = url
    upstream.save()


def test_probes_move_an_upstream_through_healthy_degraded_unhealthy_and_back(
    world, acme, fake_upstream, settings
):
    settings.HEALTH_DEGRADED_LATENCY_MS = 150
    settings.HEALTH_RECENT_CHECKS = 3
    make_model(
        "ha", owner=acme, base_urls=[fake_upstream.base_url(), fake_upstream.base_url(tokens=2)]
    )
    primary, secondary = Upstream.objects.filter(model__name="ha").order_by("priority")

    assert _check(primary).status == HealthStatus.HEALTHY
    _move(primary, fake_upstream.base_url(latency_ms=300))
    assert _check(primary).status == HealthStatus.DEGRADED
    _move(primary, fake_upstream.base_url(status=500))
    check = _check(primary)
    assert (check.status, check.error) == (HealthStatus.UNHEALTHY, "HTTP 500")
    assert primary.consecutive_failures == 1 and primary.last_error == "HTTP 500"

    # The router now sends traffic to the secondary.
    served = _chat(world, "ha")
    assert served.headers["x-switchboard-upstream"] == "ha-1"

    _move(primary, fake_upstream.base_url())
    assert _check(primary).status == HealthStatus.DEGRADED  # a failure is still recent
    _check(primary)
    assert _check(primary).status == HealthStatus.HEALTHY
    assert _chat(world, "ha").headers["x-switchboard-upstream"] == "ha-0"
    assert HealthCheck.objects.filter(upstream=primary).count() == 6


def test_a_stopped_upstream_is_unhealthy_after_one_probe(world, acme):
    make_model("gone", owner=acme, base_urls=["http://127.0.0.1:1/v1"])
    check = _check(Upstream.objects.get(model__name="gone"))
    assert check.status == HealthStatus.UNHEALTHY and "ConnectError" in check.error


def test_the_probe_is_cheap_by_default_and_a_completion_when_asked(world, acme, fake_upstream):
    make_model("cheap", owner=acme, base_urls=[fake_upstream.base_url()], api_key=UPSTREAM_SECRET)
    upstream = Upstream.objects.get(model__name="cheap")
    fake_upstream.clear()
    _check(upstream)
    upstream.probe = "completion"
    upstream.save()
    _check(upstream)
    first, second = fake_upstream.requests()
    assert (first["method"], first["path"]) == ("GET", "/v1/models")
    assert first["authorization"]["present"]
    assert second["path"] == "/v1/chat/completions" and second["json"]["max_tokens"] == 1


def test_an_anthropic_style_upstream_is_probed_with_its_own_headers_and_route(
    world, acme, fake_upstream
):
    make_model(
        "claude",
        owner=acme,
        base_urls=[fake_upstream.base_url()],
        api_key=UPSTREAM_SECRET,
        api_style="anthropic",
    )
    upstream = Upstream.objects.get(model__name="claude")
    fake_upstream.clear()
    assert _check(upstream).is_success
    upstream.probe = "completion"
    upstream.save()
    assert _check(upstream).is_success
    first, second = fake_upstream.requests()
    assert (first["method"], first["path"]) == ("GET", "/v1/models")
    assert not first["authorization"]["present"]
    assert first["headers"]["x-api-key"].startswith("sha256:")
    assert first["headers"]["anthropic-version"] == "2023-06-01"
    assert second["path"] == "/v1/messages" and second["json"]["max_tokens"] == 1


def test_two_workers_running_the_task_at_once_probe_each_upstream_once(world, fake_upstream):
    fake_upstream.clear()
    due = Upstream.objects.filter(is_enabled=True).count()
    barrier = threading.Barrier(2)
    errors = []

    def worker():
        from django.db import connection

        try:
            barrier.wait()
            upstreams_check()
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len([r for r in fake_upstream.requests() if r["path"] == "/v1/models"]) == due
    assert HealthCheck.objects.count() == due
    assert upstreams_check() == []  # nothing is due again within the interval


def test_a_successful_probe_closes_the_breaker(world, acme, fake_upstream, settings):
    settings.GATEWAY_BREAKER_THRESHOLD = 1
    settings.GATEWAY_BREAKER_COOLDOWN = 600
    make_model(
        "br", owner=acme, base_urls=[fake_upstream.base_url(status=500), fake_upstream.base_url()]
    )
    primary = Upstream.objects.filter(model__name="br").order_by("priority").first()
    _chat(world, "br")
    assert router.breaker.is_open(primary.id)
    _move(primary, fake_upstream.base_url())
    _check(primary)
    assert _chat(world, "br").headers["x-switchboard-upstream"] == "br-0"


def test_the_beat_schedule_runs_checks_and_pruning():
    tasks = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert {"ai.tasks.upstreams_check_task", "ai.tasks.health_prune_task"} <= tasks


def test_it_prunes_old_probe_history(world, settings):
    from datetime import timedelta

    from django.utils import timezone

    upstream = Upstream.objects.first()
    old = timezone.now() - timedelta(days=settings.HEALTH_RETENTION_DAYS + 1)
    HealthCheck.objects.create(upstream=upstream, status="healthy", is_success=True, checked_at=old)
    HealthCheck.objects.create(
        upstream=upstream, status="healthy", is_success=True, checked_at=timezone.now()
    )
    assert health_prune() == 1
    assert HealthCheck.objects.count() == 1


def _chat(world, model):
    response = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": model, "messages": HI},
    )
    assert response.status_code == 200, response.text
    return response


# --- Status endpoints ------------------------------------------------------------


def test_api_status_reports_the_gateway_without_secrets(world, fake_upstream):
    from panel.services import heartbeat_record

    upstreams_check()
    heartbeat_record(name="beat")
    response = httpx.get(f"{world.url}/api/status")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == {"reachable": True}
    assert body["celery"]["beat_and_worker_alive"] is True
    assert body["models"]["total"] == 4
    assert body["models"]["by_status"]["healthy"] == 4
    assert body["version"]
    assert UPSTREAM_SECRET not in response.text and "127.0.0.1" not in response.text


def test_liveness_and_readiness(world):
    assert httpx.get(f"{world.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{world.url}/readyz")
    assert ready.status_code == 200 and ready.json()["database"] is True


def test_readiness_fails_when_the_database_is_unreachable(client):
    with mock.patch(
        "django.db.backends.base.base.BaseDatabaseWrapper.ensure_connection",
        side_effect=OperationalError("connection refused"),
    ):
        response = client.get("/readyz")
        status = client.get("/api/status")
    assert response.status_code == 503 and response.json()["database"] is False
    assert status.status_code == 503 and status.json()["status"] == "degraded"


def test_deployment_health_for_alices_model(world, alice):
    upstreams_check()
    browser = session_client(alice, world.url)
    response = browser.get(f"/api/deployments/{world.chat.id}/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "status",
        "timestamp",
        "services",
        "deployment_status",
        "response_time_ms",
        "last_checked",
    }
    assert body["status"] == "healthy" and body["deployment_status"] == "running"
    assert body["services"] == {"acme-chat-primary": "running"}
    upstream = world.chat.upstreams.get()
    one = browser.get(f"/api/deployments/{world.chat.id}/upstreams/{upstream.id}/health")
    assert one.json()["services"] == {"acme-chat-primary": "running"}


def test_a_model_is_as_healthy_as_its_best_enabled_upstream_everywhere(
    world, alice, acme, superuser, client
):
    model = make_model("mixed", owner=acme, base_urls=["http://127.0.0.1:9"] * 4)
    statuses = [HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN, HealthStatus.DEGRADED]
    for upstream, status in zip(model.upstreams.order_by("priority"), statuses, strict=False):
        Upstream.objects.filter(pk=upstream.pk).update(health_status=status)
    # The best upstream of all is disabled: it does not count.
    model.upstreams.filter(priority=3).update(health_status=HealthStatus.HEALTHY, is_enabled=False)

    by_status = httpx.get(f"{world.url}/api/status").json()["models"]["by_status"]
    deployment = session_client(alice, world.url).get(f"/api/deployments/{model.id}/health")
    client.force_login(superuser)
    managed = client.get(f"/api/v1/ai/models/{model.id}").json()
    assert by_status == {"healthy": 0, "degraded": 1, "unhealthy": 0, "starting": 0, "unknown": 4}
    assert deployment.json()["status"] == managed["status"] == "degraded"
    assert deployment.json()["deployment_status"] == "running"


def test_deployment_health_is_404_for_charlie(world, charlie):
    for path in (
        f"/api/deployments/{world.chat.id}/health",
        f"/api/deployments/{world.chat.id}/upstreams/{world.chat.upstreams.get().id}/health",
        "/api/deployments/999999/health",
    ):
        response = httpx.get(
            f"{world.url}{path}", headers={"Authorization": f"Bearer {world.charlie_key}"}
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "deployment_not_found"


def test_the_admin_checks_health_on_demand(world, superuser, client):
    from django.urls import reverse

    client.force_login(superuser)
    upstream = world.chat.upstreams.get()
    response = client.post(
        reverse("admin:ai_upstream_changelist"),
        {"action": "check_now", "_selected_action": [upstream.pk]},
        follow=True,
    )
    assert "healthy" in response.content.decode()
    upstream.refresh_from_db()
    assert upstream.health_status == HealthStatus.HEALTHY
    page = client.get(reverse("admin:ai_upstream_change", args=[upstream.pk])).content.decode()
    assert "recent health checks" in page.lower()
