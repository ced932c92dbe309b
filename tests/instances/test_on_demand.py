"""On-demand start through the gateway, against a stand-in for the node's agent.

The stand-in answers ``POST /instances/{name}/demand`` as the agent would: it
writes the instance ``running`` (``update()`` and a generation bump, as the agent
does) where a fake model server listens, then answers 200; or it refuses. The
gateway under test is the real ASGI app on loopback.
"""

import threading

import httpx
import pytest

from ai.gateway import starts
from ai.instances import activity
from ai.models import Instance, InstanceStatus, ModelLink, Upstream
from panel.localcache import bump_generation
from tests.ai.conftest import clear_of_a_minute_turn, wait_for_usage
from tests.factories import UpstreamFactory
from tests.instances import local_world, stand_in_agent
from tests.instances.local_world import HI, set_status
from tests.servers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent

REFUSED = "http://127.0.0.1:1/v1"  # nothing listens on port 1
FULL = "Node 'local' is full of busy instances."


def _starts_it(name: str, body: dict) -> tuple[int, dict]:
    """What the agent does on a demand it can meet: the row says running, then 200."""
    instance = Instance.objects.get(name=name)
    Instance.objects.filter(pk=instance.pk).update(status=InstanceStatus.RUNNING)
    bump_generation()
    return 200, {"status": "running", "port": instance.port}


@pytest.fixture
def stopped(local, agent):
    """Acme's "smol-chat", whose only instance is stopped with on-demand start."""
    set_status(local.instance, InstanceStatus.STOPPED, on_demand_start=True)
    agent.on_demand = _starts_it
    local.agent = agent
    return local


def _served(local) -> list[dict]:
    return [r for r in local.server.requests() if r["path"] == "/v1/chat/completions"]


def _in_threads(count: int, call) -> tuple[list, list[threading.Thread]]:
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(call())) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=60)


# --- Started, then served ----------------------------------------------------------------


def test_a_request_for_a_stopped_on_demand_instance_starts_it_and_is_served(stopped, settings):
    response = stopped.chat()

    assert response.status_code == 200, response.text
    assert response.headers["x-switchboard-upstream"] == "smol-local"
    assert stopped.agent.demands == [
        {"name": "smol", "body": {"timeout": settings.INSTANCE_ON_DEMAND_START_TIMEOUT}}
    ]
    assert len(_served(stopped)) == 1
    (event,) = wait_for_usage(1)
    assert (event.status, event.upstream_id, event.attempts) == ("ok", stopped.upstream.id, 1)
    # Started once: the next request finds it running.
    assert stopped.chat().status_code == 200
    assert len(stopped.agent.demands) == 1


def test_a_stream_waits_for_the_start_then_streams(stopped):
    with httpx.stream(
        "POST",
        f"{stopped.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {stopped.alice_key}"},
        json={"model": "smol-chat", "messages": HI, "stream": True},
        timeout=30,
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    (event,) = wait_for_usage(1)
    assert (event.status, event.is_stream, event.upstream_id) == ("ok", True, stopped.upstream.id)


def test_concurrent_requests_wait_on_one_demand(stopped):
    stopped.agent.release.clear()
    results, threads = _in_threads(5, stopped.chat)
    wait_for(lambda: starts.waiting(stopped.instance.id) == 5, 30, "five waiting requests")
    assert stopped.agent.waiting == 1

    stopped.agent.release.set()
    _join(threads)

    assert [r.status_code for r in results] == [200] * 5
    assert len(stopped.agent.demands) == 1
    events = wait_for_usage(5)
    assert {(e.status, e.upstream_id) for e in events} == {("ok", stopped.upstream.id)}


def test_past_the_queue_bound_a_request_gets_503_with_retry_after_at_once(stopped, settings):
    settings.INSTANCE_START_QUEUE = 2
    stopped.agent.release.clear()
    results, threads = _in_threads(2, stopped.chat)
    wait_for(lambda: starts.waiting(stopped.instance.id) == 2, 30, "two waiting requests")

    turned_away = stopped.chat()

    assert turned_away.status_code == 503
    assert turned_away.headers["Retry-After"] == str(starts.QUEUE_FULL_RETRY_AFTER)
    error = turned_away.json()["error"]
    assert error["code"] == "model_not_available"
    assert error["message"] == (
        "Too many requests are waiting for instance 'smol' to start; retry shortly."
    )
    stopped.agent.release.set()
    _join(threads)
    assert [r.status_code for r in results] == [200, 200]
    assert len(stopped.agent.demands) == 1


# --- Refused -----------------------------------------------------------------------------


def test_a_start_that_fails_is_a_503_with_the_agents_reason_and_retry_after(stopped):
    stopped.agent.on_demand = lambda name, body: (
        503,
        {"status": "waiting", "reason": FULL, "retry_after": 30},
    )

    response = stopped.chat()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.json()["error"] == {
        "message": f"Instance 'smol' could not be started: {FULL}",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_available",
    }
    assert _served(stopped) == []
    (event,) = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 503)
    assert event.error == f"Instance 'smol' could not be started: {FULL}"
    assert activity.in_flight(stopped.instance.id) == 0


def test_a_refusal_without_retry_after_has_no_such_header(stopped):
    stopped.agent.on_demand = lambda name, body: (
        409,
        {"reason": "It is stopped and on-demand start is off."},
    )

    response = stopped.chat()

    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.json()["error"]["message"] == (
        "Instance 'smol' could not be started: It is stopped and on-demand start is off."
    )


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 7, "reason": None, "retry_after": "soon"},
        {"retry_after": -5},
        {"retry_after": True},
        {"retry_after": 1e400},
    ],
)
def test_a_wrong_typed_refusal_still_gets_a_clear_503(stopped, answer):
    stopped.agent.on_demand = lambda name, body: (503, answer)

    response = stopped.chat()

    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.json()["error"]["message"] == "Instance 'smol' could not be started: HTTP 503"


def test_an_agent_that_does_not_answer_is_a_503_saying_so(local, no_agent):
    set_status(local.instance, InstanceStatus.STOPPED, on_demand_start=True)

    response = local.chat()

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "agent_unavailable"
    assert error["message"].startswith(
        "Instance 'smol' could not be started: The instance agent of node 'local' is not "
        "answering (ConnectError)"
    )
    (event,) = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 503)


def test_an_agent_silent_past_the_timeout_is_a_503_saying_how_long(stopped, settings):
    settings.INSTANCE_ON_DEMAND_START_TIMEOUT = 0.5
    stopped.agent.release.clear()  # the agent never answers in time

    response = stopped.chat()

    assert response.status_code == 503
    assert response.json()["error"]["message"] == (
        "Instance 'smol' could not be started: not ready within 0.5 s"
    )
    assert stopped.agent.demands[0]["body"] == {"timeout": 0.5}
    (event,) = wait_for_usage(1)
    assert event.status == "upstream_error"


def test_an_agent_that_refuses_our_key_is_a_503_without_the_key(stopped, settings):
    stopped.agent.key = "another-key"

    response = stopped.chat()

    assert response.status_code == 503
    assert response.json()["error"]["message"] == (
        "Instance 'smol' could not be started: The instance agent of node 'local' refused "
        "the node's key: set the node's key to that agent's INSTANCE_AGENT_KEY."
    )
    assert settings.INSTANCE_AGENT_KEY not in response.text


def test_an_instance_deleted_while_it_starts_is_a_503(stopped):
    def delete_it(name, body):
        Instance.objects.filter(name=name).delete()
        return 200, {"status": "running", "port": 1}

    stopped.agent.on_demand = delete_it

    response = stopped.chat()

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "Instance 'smol' no longer serves this model."
    (event,) = wait_for_usage(1)
    assert event.status == "upstream_error"


def test_a_start_without_on_demand_start_is_never_asked_for(local, agent):
    set_status(local.instance, InstanceStatus.STOPPED)

    response = local.chat()

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "Instance 'smol' is stopped."
    assert agent.demands == []


def test_charlie_cannot_start_acmes_instance(stopped):
    response = stopped.chat(key=stopped.charlie_key)

    assert response.status_code == 404
    assert "smol'" not in response.text and "start" not in response.text
    assert stopped.agent.demands == []


def test_a_caller_over_the_limit_does_not_start_the_instance(stopped):
    ModelLink.objects.filter(model=stopped.model).update(requests_per_minute=1)
    stopped.model.save()  # signal the caches
    clear_of_a_minute_turn()
    assert stopped.chat(key=stopped.bob_key).status_code == 200
    set_status(stopped.instance, InstanceStatus.STOPPED)

    assert stopped.chat(key=stopped.bob_key).status_code == 429
    assert len(stopped.agent.demands) == 1


# --- Failover comes first ----------------------------------------------------------------


def test_a_running_upstream_serves_before_any_start(stopped, fake_upstream):
    cloud = UpstreamFactory(
        model=stopped.model, name="cloud", base_url=fake_upstream.base_url(), priority=1
    )

    response = stopped.chat()

    assert response.status_code == 200
    assert response.headers["x-switchboard-upstream"] == "cloud"
    assert stopped.agent.demands == []
    (event,) = wait_for_usage(1)
    assert event.upstream_id == cloud.id


def test_the_instance_is_started_once_the_running_upstreams_failed(stopped):
    cloud = UpstreamFactory(model=stopped.model, name="cloud", base_url=REFUSED, priority=0)
    Upstream.objects.filter(pk=stopped.upstream.pk).update(priority=1)

    response = stopped.chat()

    assert response.status_code == 200
    assert response.headers["x-switchboard-upstream"] == "smol-local"
    assert len(stopped.agent.demands) == 1
    (event,) = wait_for_usage(1)
    assert (event.upstream_id, event.attempts) == (stopped.upstream.id, 2)
    assert cloud.id != event.upstream_id


# --- The client leaves -------------------------------------------------------------------


def test_a_client_that_leaves_while_it_waits_leaves_one_cancelled_event(stopped):
    stopped.agent.release.clear()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{stopped.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {stopped.alice_key}"},
            json={"model": "smol-chat", "messages": HI},
            timeout=httpx.Timeout(30, read=1),
        )

    (event,) = wait_for_usage(1)
    assert event.status == "client_cancelled"
    assert activity.in_flight(stopped.instance.id) == 0
    # The start it asked for goes on, for the next request.
    stopped.agent.release.set()
    wait_for(lambda: starts.waiting(stopped.instance.id) == 0, 10, "the demand to end")
    assert stopped.chat().status_code == 200
    assert len(stopped.agent.demands) == 1
