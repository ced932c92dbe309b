"""Scheduling on a node: max running, LRU eviction of idle instances, waiting, anti-thrash,
tenant-aware victims, idle stops and drains (issue 14).

The agent is the real subprocess; its instances run the fake upstream. The test
plays the gateway: it demands starts (``POST /instances/{name}/demand``) and
writes ``last_request_at`` while it has requests in flight (``demands.Activity``).
"""

from concurrent.futures import ThreadPoolExecutor

import httpx

from ai.models import Instance
from tests.factories import OrganisationFactory
from tests.instances.conftest import command_instance, is_running, wait_status
from tests.instances.demands import SCHEDULING_ENV, Activity, ago, demand, last_used, touch


def _on_demand(name: str, **fields) -> Instance:
    return command_instance(name, on_demand_start=True, **fields)


def _running(*names: str) -> list[Instance]:
    return [wait_status(_on_demand(name), "running") for name in names]


def _row(instance: Instance) -> Instance:
    return Instance.objects.get(pk=instance.pk)


def _assert_evicted(instance: Instance, by: str) -> None:
    row = _row(instance)
    assert (row.status, row.desired_state) == ("stopped", "stopped")
    assert row.status_reason == f"evicted to start {by}"
    assert row.assigned_port is None and row.pid is None
    assert not is_running(instance.pid, instance.pid_started)


def _assert_untouched(instance: Instance) -> None:
    row = _row(instance)
    assert (row.status, row.desired_state) == ("running", "running")
    assert (row.pid, row.pid_started) == (instance.pid, instance.pid_started)


def test_it_evicts_the_least_recently_used_idle_instance_to_start_another(agent_factory):
    agent = agent_factory(INSTANCE_MAX_RUNNING="2", **SCHEDULING_ENV).start()
    older, newer = _running("older", "newer")
    last_used(older, ago(minutes=10))
    last_used(newer, ago(minutes=5))
    _on_demand("third", desired_state="stopped")

    reply = demand(agent, "third")

    assert reply.status_code == 200, reply.text
    third = _row(Instance.objects.get(name="third"))
    assert reply.json() == {"status": "running", "port": third.assigned_port}
    assert third.status == "running"
    _assert_evicted(older, by="third")
    _assert_untouched(newer)
    assert len(agent.children()) == 2
    assert "Stopped instance older" in agent.log()


def test_it_never_evicts_a_busy_instance(agent_factory):
    agent = agent_factory(INSTANCE_MAX_RUNNING="2", **SCHEDULING_ENV).start()
    busy, idle = _running("busy", "idle")
    # By priority and age the busy one would go first.
    last_used(busy, ago(minutes=10))
    last_used(idle, ago(minutes=5), last_request_priority=5)
    _on_demand("third", desired_state="stopped")

    with Activity(busy):
        reply = demand(agent, "third")

    assert reply.status_code == 200, reply.text
    _assert_evicted(idle, by="third")
    _assert_untouched(busy)


def test_it_waits_while_every_instance_is_busy_and_starts_when_one_frees(agent_factory):
    agent = agent_factory(INSTANCE_MAX_RUNNING="1", **SCHEDULING_ENV).start()
    (busy,) = _running("busy")
    waiting = _on_demand("waiting", desired_state="stopped")

    with Activity(busy):
        reply = demand(agent, "waiting", timeout=1)
        assert reply.status_code == 503
        body = reply.json()
        assert body["status"] == "waiting" and body["retry_after"] >= 1
        assert body["reason"] == (
            "node local runs its maximum of 1 instances and none can make room "
            "(each is busy or does not start on demand); it starts when one stops"
        )
        assert reply.headers["Retry-After"] == str(body["retry_after"])
        row = _row(waiting)
        assert (row.status, row.desired_state) == ("waiting", "running")
        assert row.status_reason == body["reason"]
        assert row.pid is None
        _assert_untouched(busy)

    # The requests end: the busy one drains, is evicted, and the waiting one starts.
    wait_status(waiting, "running")
    _assert_evicted(busy, by="waiting")
    assert demand(agent, "waiting").status_code == 200


def test_it_does_not_evict_an_instance_within_its_minimum_residency_while_another_can_go(
    agent_factory,
):
    env = {**SCHEDULING_ENV, "INSTANCE_MIN_RESIDENCY": "600"}
    agent = agent_factory(INSTANCE_MAX_RUNNING="2", **env).start()
    settled, young = _running("settled", "young")
    # The young one is the least recently used, but it started a moment ago.
    Instance.objects.filter(pk=settled.pk).update(started_at=ago(hours=1))
    last_used(settled, ago(minutes=1))
    last_used(young, ago(minutes=10))
    _on_demand("third", desired_state="stopped")

    assert demand(agent, "third").status_code == 200

    _assert_evicted(settled, by="third")
    _assert_untouched(young)
    # With only young ones left, one of them still makes room.
    last_used(_row(young), ago(minutes=10))
    _on_demand("fourth", desired_state="stopped")
    assert demand(agent, "fourth").status_code == 200
    _assert_evicted(young, by="fourth")


def test_an_organisations_reserved_instances_are_not_evicted_for_another_organisation(
    agent_factory,
):
    agent = agent_factory(INSTANCE_MAX_RUNNING="2", **SCHEDULING_ENV).start()
    acme = OrganisationFactory(slug="acme", reserved_instances=1)
    globex = OrganisationFactory(slug="globex")
    reserved = wait_status(_on_demand("reserved", organisation=acme), "running")
    other = wait_status(_on_demand("other", organisation=globex), "running")
    last_used(reserved, ago(minutes=10))  # the least recently used
    last_used(other, ago(minutes=5))
    _on_demand("globex-new", organisation=globex, desired_state="stopped")

    assert demand(agent, "globex-new").status_code == 200

    _assert_evicted(other, by="globex-new")
    _assert_untouched(reserved)
    # Acme's own start may evict it: a reservation protects it from others only.
    last_used(_row(reserved), ago(minutes=10))
    last_used(Instance.objects.get(name="globex-new"), ago(minutes=5))
    _on_demand("acme-new", organisation=acme, desired_state="stopped")
    assert demand(agent, "acme-new").status_code == 200
    _assert_evicted(reserved, by="acme-new")


def test_two_starts_at_once_evict_no_more_than_a_reservation_allows(agent_factory):
    agent = agent_factory(INSTANCE_MAX_RUNNING="2", **SCHEDULING_ENV).start()
    acme = OrganisationFactory(slug="acme", reserved_instances=1)
    globex = OrganisationFactory(slug="globex")
    acme_ones = [wait_status(_on_demand(n, organisation=acme), "running") for n in ("a1", "a2")]
    for instance in acme_ones:
        last_used(instance, ago(minutes=10))
    globex_ones = [
        _on_demand(name, organisation=globex, desired_state="stopped") for name in ("g1", "g2")
    ]

    # Requests keep globex's busy once they run: only acme's could make room.
    with Activity(*globex_ones), ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda name: demand(agent, name, 8), ["g1", "g2"]))

    assert sorted(r.status_code for r in replies) == [200, 503]
    rows = [_row(instance) for instance in acme_ones]
    assert sorted(row.status for row in rows) == ["running", "stopped"]
    assert Instance.objects.filter(name__in=["g1", "g2"], status="waiting").count() == 1


def test_it_evicts_the_lowest_link_priority_before_the_least_recently_used(agent_factory):
    agent = agent_factory(INSTANCE_MAX_RUNNING="2", **SCHEDULING_ENV).start()
    important, cheap = _running("important", "cheap")
    last_used(important, ago(minutes=10), last_request_priority=3)
    last_used(cheap, ago(minutes=1), last_request_priority=0)
    _on_demand("third", desired_state="stopped")

    assert demand(agent, "third").status_code == 200

    _assert_evicted(cheap, by="third")
    _assert_untouched(important)


def test_a_node_row_sets_the_nodes_maximum(agent_factory):
    from ai.models import Node

    Node.objects.create(
        name="local", address="http://127.0.0.1:1", instance_host="127.0.0.1",
        max_running_instances=1,
    )  # fmt: skip
    agent = agent_factory(INSTANCE_MAX_RUNNING="5", **SCHEDULING_ENV).start()
    (first,) = _running("first")
    last_used(first, ago(minutes=10))
    _on_demand("second", desired_state="stopped")

    assert demand(agent, "second").status_code == 200

    _assert_evicted(first, by="second")


def test_an_instance_wanted_running_takes_a_slot_like_a_demand(agent_factory):
    agent_factory(INSTANCE_MAX_RUNNING="1", **SCHEDULING_ENV).start()
    (first,) = _running("first")
    last_used(first, ago(minutes=10))

    # Started by an operator (desired running), not by a request.
    started = wait_status(command_instance("started"), "running")

    assert started.assigned_port is not None
    _assert_evicted(first, by="started")


# --- Idle stops and drains ------------------------------------------------------------


def test_it_stops_an_instance_idle_longer_than_its_idle_timeout(agent_factory):
    agent_factory(**SCHEDULING_ENV).start()
    idle = wait_status(command_instance("idle", idle_timeout=1), "running")
    fresh = wait_status(command_instance("fresh", idle_timeout=1), "running")
    forever = wait_status(command_instance("forever"), "running")
    for instance in (idle, forever):
        last_used(instance, ago(minutes=2))

    wait_status(idle, "stopped")

    row = _row(idle)
    assert row.desired_state == "stopped" and row.status_reason == "idle for 1 min"
    assert row.assigned_port is None
    assert not is_running(idle.pid, idle.pid_started)
    _assert_untouched(fresh)
    _assert_untouched(forever)  # no idle_timeout: never stopped for idleness


def test_an_idle_stop_never_cuts_a_stream_in_flight(agent_factory):
    agent_factory(**SCHEDULING_ENV).start()
    instance = wait_status(command_instance("streaming", idle_timeout=1), "running")
    last_used(instance, ago(minutes=2))
    url = f"http://127.0.0.1:{instance.assigned_port}/v1/chat/completions"
    body = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"X-Fake-Chunk-Delay-Ms": "250"}  # 20 chunks: 5 s, twice the busy window

    with Activity(instance), httpx.stream("POST", url, json=body, headers=headers) as reply:
        text = "".join(reply.iter_text())

    assert reply.status_code == 200
    assert text.rstrip().endswith("data: [DONE]")
    assert text.count("tok") == 20
    _assert_untouched(instance)


def test_a_request_arriving_while_draining_keeps_the_instance_running(agent_factory):
    agent_factory(**SCHEDULING_ENV).start()
    instance = wait_status(command_instance("draining", idle_timeout=1), "running")
    last_used(instance, ago(minutes=2))

    row = wait_status(instance, "draining")
    assert row.status_reason == "draining: idle for 1 min"
    touch(instance)  # a request, written as the gateway does

    row = wait_status(instance, "running")
    assert row.status_reason == ""
    _assert_untouched(instance)


def test_a_demand_while_draining_keeps_the_instance_running(agent_factory):
    agent = agent_factory(**SCHEDULING_ENV).start()
    instance = wait_status(_on_demand("draining", idle_timeout=1), "running")
    last_used(instance, ago(minutes=2))
    wait_status(instance, "draining")

    reply = demand(agent, "draining")

    assert reply.status_code == 200
    assert reply.json() == {"status": "running", "port": instance.assigned_port}
    _assert_untouched(instance)


def test_an_eviction_drain_aborted_by_a_request_leaves_the_newcomer_waiting(agent_factory):
    agent = agent_factory(INSTANCE_MAX_RUNNING="1", **SCHEDULING_ENV).start()
    (first,) = _running("first")
    last_used(first, ago(minutes=10))
    second = _on_demand("second", desired_state="stopped")

    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(demand, agent, "second", 8)
        wait_status(first, "draining")
        with Activity(first):  # a request arrives while it drains
            wait_status(first, "running")
            assert reply.result().status_code == 503
            assert _row(second).status == "waiting"

    _assert_untouched(first)
    # Its requests over, it is evicted after all.
    wait_status(second, "running")
    _assert_evicted(first, by="second")
