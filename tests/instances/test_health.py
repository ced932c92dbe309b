"""An instance's status feeds its model's health, /api/status and /metrics."""

import re
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from ai.gateway import router
from ai.models import HealthCheck, HealthStatus, InstanceStatus, Upstream
from ai.services import upstreams_check
from tests.ai.conftest import session_client
from tests.factories import UpstreamFactory
from tests.instances import local_world
from tests.instances.local_world import instance_running_on, set_status
from tests.servers import free_port, start_gateway, wait_until_serving

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server

METRICS_TOKEN = "scrape-me"


def _probe(local) -> Upstream:
    upstreams_check(upstreams=[Upstream.objects.get(pk=local.upstream.pk)])
    local.upstream.refresh_from_db()
    return local.upstream


def _deployment(local, alice) -> dict:
    response = session_client(alice, local.url).get(f"/api/deployments/{local.model.id}/health")
    assert response.status_code == 200, response.text
    return response.json()


def _managed_status(local, superuser, client) -> str:
    client.force_login(superuser)
    return client.get(f"/api/v1/ai/models/{local.model.id}").json()["status"]


def _models_by_status(local) -> dict:
    return httpx.get(f"{local.url}/api/status").json()["models"]["by_status"]


# --- A model's health, from its instance's status and the probes ----------------------------


@pytest.mark.parametrize(
    ("instance_status", "probed", "health", "service", "deployment_status"),
    [
        (InstanceStatus.RUNNING, HealthStatus.HEALTHY, "healthy", "running", "running"),
        (InstanceStatus.RUNNING, HealthStatus.DEGRADED, "degraded", "degraded", "running"),
        (InstanceStatus.RUNNING, HealthStatus.UNKNOWN, "unknown", "unknown", "stopped"),
        (InstanceStatus.RUNNING, HealthStatus.UNHEALTHY, "unhealthy", "down", "stopped"),
        (InstanceStatus.STARTING, HealthStatus.HEALTHY, "starting", "starting", "starting"),
        (InstanceStatus.RESTARTING, HealthStatus.HEALTHY, "starting", "starting", "starting"),
        (InstanceStatus.STOPPED, HealthStatus.HEALTHY, "unhealthy", "down", "stopped"),
        (InstanceStatus.FAILED, HealthStatus.UNKNOWN, "unhealthy", "down", "stopped"),
    ],
)
def test_a_local_models_health_follows_its_instance_everywhere(
    local, alice, superuser, client, instance_status, probed, health, service, deployment_status
):
    # The last probe said ``probed``; the agent says the instance is ``instance_status``.
    Upstream.objects.filter(pk=local.upstream.pk).update(health_status=probed)
    set_status(local.instance, instance_status)

    deployment = _deployment(local, alice)

    assert deployment["status"] == health
    assert deployment["services"] == {"smol-local": service}
    assert deployment["deployment_status"] == deployment_status
    assert _managed_status(local, superuser, client) == health
    assert _models_by_status(local)[health] == 1


def test_all_five_health_values_come_from_a_real_instance_in_turn(local, alice, settings):
    """unknown (never probed), healthy and degraded (probes), starting and unhealthy (status)."""
    settings.HEALTH_RECENT_CHECKS = 2
    seen = [_deployment(local, alice)["status"]]
    assert _probe(local).health_status == HealthStatus.HEALTHY
    seen.append(_deployment(local, alice)["status"])

    set_status(local.instance, InstanceStatus.RUNNING, port=free_port())
    assert _probe(local).health_status == HealthStatus.UNHEALTHY  # nothing answers there
    set_status(local.instance, InstanceStatus.RUNNING, port=local.server.port)
    assert _probe(local).health_status == HealthStatus.DEGRADED  # a failure is still recent
    seen.append(_deployment(local, alice)["status"])

    set_status(local.instance, InstanceStatus.STARTING)
    seen.append(_deployment(local, alice)["status"])
    set_status(local.instance, InstanceStatus.STOPPED)
    seen.append(_deployment(local, alice)["status"])

    assert seen == ["unknown", "healthy", "degraded", "starting", "unhealthy"]


def test_a_cloud_upstream_keeps_the_model_healthy_while_its_instance_starts(local, alice):
    UpstreamFactory(model=local.model, name="cloud", priority=1, health_status="healthy")
    set_status(local.instance, InstanceStatus.STARTING)

    deployment = _deployment(local, alice)

    assert deployment["status"] == "healthy"
    assert deployment["services"] == {"smol-local": "starting", "cloud": "running"}


def test_charlie_sees_no_health_of_acmes_local_model(local):
    response = httpx.get(
        f"{local.url}/api/deployments/{local.model.id}/health",
        headers={"Authorization": f"Bearer {local.charlie_key}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "deployment_not_found"


# --- Probes ---------------------------------------------------------------------------------


def test_a_running_instance_is_probed_at_its_node_and_port(local):
    local.server.clear()

    checks = upstreams_check()

    assert [c.upstream_id for c in checks] == [local.upstream.id]
    assert checks[0].status == HealthStatus.HEALTHY
    (request,) = local.server.requests()
    assert (request["method"], request["path"]) == ("GET", "/v1/models")


@pytest.mark.parametrize("status", [InstanceStatus.STOPPED, InstanceStatus.STARTING])
def test_an_instance_that_does_not_run_is_not_probed(local, settings, status):
    settings.GATEWAY_BREAKER_THRESHOLD = 1
    Upstream.objects.filter(pk=local.upstream.pk).update(health_status=HealthStatus.HEALTHY)
    set_status(local.instance, status)
    local.server.clear()

    assert upstreams_check() == []
    assert upstreams_check(upstreams=[Upstream.objects.get(pk=local.upstream.pk)]) == []

    local.upstream.refresh_from_db()
    assert local.server.requests() == []
    assert HealthCheck.objects.count() == 0
    assert (local.upstream.health_status, local.upstream.consecutive_failures) == ("healthy", 0)
    assert local.upstream.last_checked_at is None
    assert not router.breaker.is_open(local.upstream.id)


def test_an_instance_is_probed_again_once_it_runs(local):
    set_status(local.instance, InstanceStatus.STOPPED)
    assert upstreams_check() == []
    set_status(local.instance, InstanceStatus.RUNNING)

    (check,) = upstreams_check()

    assert check.upstream_id == local.upstream.id and check.status == HealthStatus.HEALTHY


# --- /api/status ----------------------------------------------------------------------------


def _some_instances() -> None:
    """Beside the running "smol": two stopped, one failed, one starting."""
    instance_running_on(None, name="a", status=InstanceStatus.STOPPED)
    instance_running_on(None, name="b", status=InstanceStatus.STOPPED)
    instance_running_on(None, name="c", status=InstanceStatus.FAILED)
    instance_running_on(31001, name="d", status=InstanceStatus.STARTING)


def test_api_status_counts_instances_by_status(local):
    _some_instances()

    body = httpx.get(f"{local.url}/api/status").json()

    assert body["instances"] == {
        "total": 5,
        "by_status": {
            "stopped": 2,
            "starting": 1,
            "running": 1,
            "failed": 1,
            "restarting": 0,
            "waiting": 0,
            "draining": 0,
        },
    }
    assert "smol" not in httpx.get(f"{local.url}/api/status").text  # counts, not names


def test_api_status_counts_no_instances_as_zeros(transactional_db, asgi_server):
    body = httpx.get(f"{asgi_server.url}/api/status").json()
    assert body["instances"]["total"] == 0
    assert set(body["instances"]["by_status"].values()) == {0}


# --- /metrics -------------------------------------------------------------------------------


def _started(instance, *, restarts: int, ready_after: float | None) -> None:
    now = timezone.now()
    instance.restart_count = restarts
    instance.started_at = now - timedelta(seconds=60)
    instance.ready_at = (
        None if ready_after is None else instance.started_at + timedelta(seconds=ready_after)
    )
    instance.save()


def _sample(text: str, name: str, **labels) -> float | None:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{label_text}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    return response.text


def test_metrics_show_instances_by_status_restarts_and_start_time(local, settings):
    settings.METRICS_TOKEN = METRICS_TOKEN
    _some_instances()
    _started(local.instance, restarts=2, ready_after=12.5)

    text = _scrape(local.url)

    assert _sample(text, "switchboard_instances", status="running") == 1
    assert _sample(text, "switchboard_instances", status="stopped") == 2
    assert _sample(text, "switchboard_instances", status="restarting") == 0
    assert _sample(text, "switchboard_instance_restarts", instance="smol") == 2
    assert _sample(text, "switchboard_instance_restarts", instance="a") == 0
    assert _sample(text, "switchboard_instance_start_seconds", instance="smol") == 12.5
    # Never started, or started again and not ready yet: no start time to show.
    assert _sample(text, "switchboard_instance_start_seconds", instance="a") is None


def test_metrics_read_the_database_at_each_scrape(local, settings):
    settings.METRICS_TOKEN = METRICS_TOKEN
    assert _sample(_scrape(local.url), "switchboard_instances", status="running") == 1

    set_status(local.instance, InstanceStatus.STOPPED)
    text = _scrape(local.url)

    assert _sample(text, "switchboard_instances", status="running") == 0
    assert _sample(text, "switchboard_instances", status="stopped") == 1
    assert text.count("# TYPE switchboard_instances gauge") == 1


def test_a_start_under_way_shows_no_start_time(local, settings):
    settings.METRICS_TOKEN = METRICS_TOKEN
    _started(local.instance, restarts=0, ready_after=-30)  # ready_at from the start before

    assert (
        _sample(_scrape(local.url), "switchboard_instance_start_seconds", instance="smol") is None
    )


def test_metrics_show_instances_once_in_multiprocess_mode(local, tmp_path):
    _started(local.instance, restarts=1, ready_after=3)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": METRICS_TOKEN}
    url, process = start_gateway(None, env)
    try:
        wait_until_serving(f"{url}/healthz")
        first, second = _scrape(url), _scrape(url)
    finally:
        process.terminate()
        process.wait(timeout=10)

    for text in (first, second):
        assert _sample(text, "switchboard_instances", status="running") == 1
        assert _sample(text, "switchboard_instance_restarts", instance="smol") == 1
        assert _sample(text, "switchboard_instance_start_seconds", instance="smol") == 3
        assert text.count("# TYPE switchboard_instances gauge") == 1
