"""The instance agent's own faults: killed, stopped, restarted, its database away.

Children outlive a killed agent and the next one re-adopts them; a stopped agent
stops them; nothing is left behind either way (checked through /proc).
"""

import os
import signal

import httpx

from ai.instances.services import instance_start
from ai.models import Instance
from tests.instances.conftest import (
    DatabaseSwitch,
    command_instance,
    is_running,
    wait_status,
)
from tests.servers import wait_for


def _serves(instance: Instance) -> bool:
    url = f"http://127.0.0.1:{instance.assigned_port}/v1/models"
    return httpx.get(url, timeout=5).status_code == 200


def test_after_kill_9_the_next_agent_readopts_what_runs_and_kills_what_was_deleted(
    agent_factory,
):
    agent = agent_factory().start()
    kept = wait_status(command_instance("kept"), "running")
    deleted = wait_status(command_instance("deleted"), "running")
    crashed = wait_status(command_instance("crashed", restart_delay=0), "running")
    before = agent.children()
    assert len(before) == 3

    agent.kill()
    # The children run on without their agent.
    assert agent.children() == before
    deleted.delete()
    os.kill(crashed.pid, signal.SIGKILL)  # dies while no agent watches
    wait_for(lambda: not is_running(crashed.pid, crashed.pid_started), 10, "the crash")

    agent.start()
    wait_for(lambda: not is_running(deleted.pid, deleted.pid_started), 60, "the stray to go")
    wait_for(
        lambda: Instance.objects.get(name="crashed").pid not in (None, crashed.pid),
        60,
        "the crashed instance to run again",
    )
    restarted = wait_status(Instance.objects.get(name="crashed"), "running")
    assert restarted.pid != crashed.pid and restarted.restart_count == 1
    # The kept one is the same process, still running, still served, and owned again.
    kept_now = wait_status(Instance.objects.get(name="kept"), "running")
    assert (kept_now.pid, kept_now.pid_started) == (kept.pid, kept.pid_started)
    assert is_running(kept.pid, kept.pid_started) and _serves(kept_now)
    assert agent.children() == {
        kept.pid: kept.pid_started,
        restarted.pid: restarted.pid_started,
    }
    assert "Re-adopted instance kept" in agent.log()

    Instance.objects.filter(name="kept").update(desired_state="stopped")
    wait_status(kept_now, "stopped")
    assert not is_running(kept.pid, kept.pid_started)


def test_sigterm_stops_every_child_and_marks_them_stopped_for_the_next_agent(agent):
    first = wait_status(command_instance("first"), "running")
    second = wait_status(command_instance("second"), "running")
    processes = {first.pid: first.pid_started, second.pid: second.pid_started}
    assert agent.children() == processes

    assert agent.terminate() == 0
    assert agent.children() == {}
    assert not any(is_running(pid, started) for pid, started in processes.items())
    for instance in (first, second):
        instance.refresh_from_db()
        assert (instance.status, instance.status_reason) == ("stopped", "agent stopped")
        assert instance.desired_state == "running"
        assert instance.pid is None

    # The desired state was kept: the next agent brings them back.
    agent.start()
    assert wait_status(first, "running").pid not in processes
    wait_status(second, "running")


def test_with_keep_children_the_agent_leaves_them_to_its_successor(agent_factory):
    agent = agent_factory().start("--keep-children")
    instance = wait_status(command_instance("rolling"), "running")

    assert agent.terminate() == 0
    assert agent.children() == {instance.pid: instance.pid_started}
    instance.refresh_from_db()
    assert instance.status == "running"

    agent.start()
    assert agent.health()["instances"] == {"rolling": "running"}
    assert agent.children() == {instance.pid: instance.pid_started}
    assert wait_status(instance, "running").pid == instance.pid
    assert _serves(instance)


def test_a_database_away_for_a_while_leaves_the_children_running(agent_factory, tmp_path):
    database = DatabaseSwitch(tmp_path)
    try:
        agent = agent_factory(database=database.url).start()
        instance = wait_status(command_instance("steady"), "running")

        database.cut()
        wait_for(lambda: "The database is unreachable" in agent.log(), 60, "the agent to notice")
        # It keeps answering, and keeps its child, through polls that all fail.
        assert agent.health()["instances"] == {"steady": "running"}
        assert agent.children() == {instance.pid: instance.pid_started}
        assert _serves(instance)

        database.restore()
        wait_for(lambda: "The database is back" in agent.log(), 60, "the agent to reconnect")
        assert agent.children() == {instance.pid: instance.pid_started}
        Instance.objects.filter(pk=instance.pk).update(desired_state="stopped")
        wait_status(instance, "stopped")
        assert not is_running(instance.pid, instance.pid_started)
    finally:
        database.close()


def test_a_second_agent_for_the_same_node_refuses_to_start(agent_factory):
    first = agent_factory().start()
    second = agent_factory()  # another port, the same log directory

    finished = second.run_to_exit()
    assert finished.returncode == 1
    assert "Another instance agent runs for node 'local'" in finished.stderr
    assert first.health() is not None


def test_an_agent_whose_port_is_taken_says_so(agent_factory):
    first = agent_factory().start()
    second = agent_factory(INSTANCE_LOG_DIR=str(first.log_dir.parent / "elsewhere"))
    second.env["INSTANCE_AGENT_URL"] = first.url

    finished = second.run_to_exit()
    assert finished.returncode == 1
    assert f"The instance agent cannot listen on {first.url}" in finished.stderr


def test_an_instance_that_failed_under_the_last_agent_runs_again_when_started(
    agent_factory, tmp_path
):
    flag = tmp_path / "can-serve"
    command = f"sh -c 'test -f {flag} || exit 4; exec {{python}} -m fakeupstream --port {{port}}'"
    agent = agent_factory().start()
    instance = wait_status(command_instance("broken", command, max_restarts=0), "failed")
    assert agent.terminate() == 0
    flag.touch()

    agent.start()
    wait_status(command_instance("witness"), "running")  # polls went by: no retry
    assert Instance.objects.get(name="broken").status == "failed"
    assert agent.log().count("Started instance broken ") == 1

    instance_start(instance=instance)
    assert wait_status(instance, "running").restart_count == 0
