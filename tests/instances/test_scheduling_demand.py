"""The agent's demand endpoint (``POST /instances/{name}/demand``, issue 14): one start for
many waiters, its answers (200, 404, 409, 503, 400, 401) and its faults (a start that fails,
one that is slow, a row deleted, the agent killed mid-demand).
"""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ai.models import Instance
from tests.factories import OrganisationFactory
from tests.instances.conftest import AGENT_KEY, command_instance, wait_status
from tests.instances.demands import demand, demands_at_once
from tests.servers import wait_for

# The fake upstream, after a pause: a model that takes a while to load.
SLOW = "sh -c 'sleep {seconds}; exec {{python}} -m fakeupstream --port {{port}}'"


def _on_demand(name: str, command: str | None = None, **fields) -> Instance:
    fields = {"desired_state": "stopped", "on_demand_start": True, **fields}
    return command_instance(name, **({"command": command} if command else {}), **fields)


def test_concurrent_demands_share_one_start(agent):
    instance = _on_demand("shared", SLOW.format(seconds=1))

    replies = demands_at_once(agent, "shared", 8)

    instance.refresh_from_db()
    assert [r.status_code for r in replies] == [200] * 8
    assert {json.dumps(r.json()) for r in replies} == {
        json.dumps({"status": "running", "port": instance.assigned_port})
    }
    assert (instance.status, instance.desired_state) == ("running", "running")
    assert agent.log().count("Started instance shared") == 1
    assert len(agent.children()) == 1  # the shell became the server
    # Running: the next demand answers at once, with no new start.
    assert demand(agent, "shared").json()["port"] == instance.assigned_port
    assert agent.log().count("Started instance shared") == 1


def test_a_demand_for_a_running_instance_without_on_demand_start_answers_at_once(agent):
    instance = wait_status(command_instance("manual"), "running")

    reply = demand(agent, "manual")

    assert reply.status_code == 200
    assert reply.json() == {"status": "running", "port": instance.assigned_port}


def test_a_demand_for_no_such_instance_on_this_node_is_404(agent):
    command_instance("elsewhere", node="other", on_demand_start=True, desired_state="stopped")

    for name in ("absent", "elsewhere", "Not-A-Name"):
        reply = demand(agent, name)
        assert reply.status_code == 404, name
        assert set(reply.json()) == {"reason"}
    assert Instance.objects.get(name="elsewhere").desired_state == "stopped"


def test_a_demand_for_a_stopped_instance_that_does_not_start_on_demand_is_409(agent):
    instance = command_instance("manual", desired_state="stopped")

    reply = demand(agent, "manual")

    assert reply.status_code == 409
    assert reply.json() == {
        "reason": "The instance 'manual' is stopped and does not start on demand."
    }
    instance.refresh_from_db()
    assert (instance.status, instance.desired_state) == ("stopped", "stopped")
    assert agent.children() == {}


def test_a_demand_whose_start_fails_gets_503_with_the_reason(agent):
    command = "{python} -c \"print('no such model'); raise SystemExit(3)\""
    _on_demand("broken", command, auto_restart=False)

    reply = demand(agent, "broken")

    assert reply.status_code == 503
    body = reply.json()
    assert body["status"] == "failed" and body["retry_after"] >= 1
    assert body["reason"].startswith("exited with code 3; the log ends with:")
    assert "no such model" in body["reason"]
    # Asked again, it tries again (a new start), and says why once more.
    again = demand(agent, "broken")
    assert again.status_code == 503 and again.json()["status"] == "failed"
    assert agent.log().count("Started instance broken") == 2


def test_a_demand_that_times_out_gets_503_and_the_start_goes_on(agent):
    instance = _on_demand("slow", SLOW.format(seconds=3))

    reply = demand(agent, "slow", timeout=0.5)

    assert reply.status_code == 503
    assert reply.json() == {
        "status": "starting",
        "reason": "The instance 'slow' is not ready after 0.5 s; it is starting.",
        "retry_after": 5,
    }
    assert reply.headers["Retry-After"] == "5"
    wait_status(instance, "running")
    assert demand(agent, "slow").status_code == 200
    assert agent.log().count("Started instance slow") == 1


def test_a_demand_refused_by_the_organisations_running_quota_gets_503(agent):
    acme = OrganisationFactory(slug="acme", max_running_instances=1)
    wait_status(command_instance("first", organisation=acme), "running")
    second = _on_demand("second", organisation=acme)

    reply = demand(agent, "second")

    assert reply.status_code == 503
    assert reply.json() == {
        "status": "stopped",
        "reason": "The organisation 'acme' may run at most 1 instances at once; "
        "stop one of them first.",
        "retry_after": 30,
    }
    second.refresh_from_db()
    assert (second.status, second.desired_state) == ("stopped", "stopped")


def test_a_demand_for_an_instance_deleted_while_it_starts_gets_404(agent):
    instance = _on_demand("doomed", SLOW.format(seconds=30))

    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(demand, agent, "doomed")
        wait_status(instance, "starting")
        instance.delete()
        assert reply.result().status_code == 404
    assert reply.result().json() == {"reason": "The instance 'doomed' was deleted."}
    wait_for(lambda: agent.children() == {}, 30, "its process to be stopped")


def test_when_the_agent_is_killed_mid_demand_the_caller_gets_an_error_and_the_next_agent_starts_it(
    agent_factory,
):
    agent = agent_factory().start()
    instance = _on_demand("survivor", SLOW.format(seconds=3))

    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(demand, agent, "survivor")
        wait_status(instance, "starting")
        agent.kill()
        with pytest.raises(httpx.TransportError):
            reply.result()

    agent.start()
    after = demand(agent, "survivor")
    assert after.status_code == 200
    instance.refresh_from_db()
    assert after.json() == {"status": "running", "port": instance.assigned_port}


BAD_BODIES = [
    b"not json",
    b"[1]",
    b'{"timeout": 5, "model": "x"}',
    b'{"timeout": "5"}',
    b'{"timeout": true}',
    b'{"timeout": 0}',
    b'{"timeout": -1}',
    b'{"timeout": 1e9}',
    b'{"timeout": NaN}',
    b'{"timeout": null}',
]


def test_it_refuses_a_bad_demand_body_with_a_400(agent):
    _on_demand("x")

    for raw in BAD_BODIES:
        reply = httpx.post(
            f"{agent.url}/instances/x/demand",
            content=raw,
            headers={"Authorization": f"Bearer {AGENT_KEY}"},
            timeout=10,
        )
        assert reply.status_code == 400, raw
        assert set(reply.json()) == {"reason"}
    assert Instance.objects.get(name="x").desired_state == "stopped"


def test_an_outsider_without_the_agent_key_gets_401_and_starts_nothing(agent):
    _on_demand("x")

    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": AGENT_KEY}):
        reply = httpx.post(f"{agent.url}/instances/x/demand", json={}, headers=headers, timeout=10)
        assert reply.status_code == 401
        assert "x" not in reply.json()
    assert Instance.objects.get(name="x").desired_state == "stopped"
