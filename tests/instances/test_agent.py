"""The instance agent runs each instance's server: start, readiness, stop, restart, logs.

The agent is the real `manage.py instance_agent` subprocess (tests/instances/conftest.py);
its instances are the fake upstream as a command, or a llama-server shim on the
llama.cpp backend's command line. Processes are checked through /proc.
"""

import socket

import httpx
from django.utils import timezone

from ai.instances.client import agent_health, agent_logs, agent_nudge
from ai.instances.services import instance_restart, instance_start
from ai.models import Instance
from tests.instances.conftest import (
    command_instance,
    group_members,
    is_running,
    llama_instance,
    proc_stat,
    wait_status,
)
from tests.servers import free_port, wait_for
from tests.workers import worker_port


def _serves(instance: Instance, path: str = "/v1/models") -> int:
    return httpx.get(f"http://127.0.0.1:{instance.assigned_port}{path}", timeout=5).status_code


def test_it_starts_an_instance_on_a_free_port_of_the_range_and_reports_it_running(agent):
    instance = command_instance("fake")
    assert agent_nudge("local") is True

    instance = wait_status(instance, "running")
    first = worker_port(21000)
    assert first <= instance.assigned_port < first + 1000 and instance.port is None
    assert instance.status_reason == ""
    assert instance.started_at <= instance.ready_at
    assert instance.exit_code is None and instance.restart_count == 0
    # The recorded pid and start time name a live process of the agent's, leading its group.
    assert is_running(instance.pid, instance.pid_started)
    assert agent.children() == {instance.pid: instance.pid_started}
    assert int(proc_stat(instance.pid)[2]) == instance.pid
    assert _serves(instance) == 200
    log = (agent.log_dir / "fake.log").read_text()
    assert f"fake upstream listening on http://127.0.0.1:{instance.assigned_port}" in log
    assert agent_health("local")["instances"] == {"fake": "running"}


def test_it_runs_a_llama_cpp_instance_from_its_command_line_until_health_answers(
    agent, llama_server, tmp_path
):
    model = tmp_path / "smollm2.gguf"
    model.write_bytes(b"GGUF")
    port = free_port()
    instance = llama_instance("llama", llama_server, model, port=port, context_size=512)

    instance = wait_status(instance, "running")
    assert instance.port == instance.assigned_port == port
    assert _serves(instance, "/health") == 200
    log = (agent.log_dir / "llama.log").read_text()
    assert f"llama-server -m {model} --host 127.0.0.1 --port {port} -c 512" in log


def test_it_stops_the_whole_process_group_killing_what_ignores_sigterm(agent):
    # A shell that leaves a child ignoring SIGTERM, then becomes the fake upstream.
    command = "sh -c 'trap \"\" TERM; sleep 600 & exec {python} -m fakeupstream --port {port}'"
    instance = wait_status(command_instance("group", command), "running")
    pid, started = instance.pid, instance.pid_started
    assert len(group_members(pid)) == 2  # the server and its sleeping child

    Instance.objects.filter(pk=instance.pk).update(desired_state="stopped")
    instance = wait_status(instance, "stopped")
    assert instance.pid is None and instance.pid_started is None
    assert instance.status_reason == ""
    assert not is_running(pid, started)
    assert group_members(pid) == set()
    assert agent.children() == {}


def test_it_restarts_an_instance_asked_to_restart(agent):
    instance = wait_status(command_instance("again", restart_count=2), "running")
    first = (instance.pid, instance.pid_started)

    Instance.objects.filter(pk=instance.pk).update(restart_requested_at=timezone.now())
    wait_for(
        lambda: Instance.objects.get(pk=instance.pk).pid not in (None, first[0]),
        60,
        "a new process",
    )
    instance = wait_status(instance, "running")
    assert not is_running(*first)
    assert agent.children() == {instance.pid: instance.pid_started}
    assert instance.restart_count == 0  # a manual restart starts the count again
    assert _serves(instance) == 200


def test_it_restarts_a_command_that_exits_at_once_then_fails_with_its_last_lines(agent):
    command = "{python} -c \"print('cannot serve today'); raise SystemExit(3)\""
    instance = command_instance("flaky", command, max_restarts=2, restart_delay=0)

    instance = wait_status(instance, "failed")
    assert instance.restart_count == 2
    assert instance.exit_code == 3
    assert instance.pid is None
    assert instance.status_reason.startswith("exited with code 3; the log ends with:\n")
    assert instance.status_reason.endswith("cannot serve today")
    # Three runs: the first and two restarts, each in the log.
    assert (agent.log_dir / "flaky.log").read_text().count("cannot serve today") == 3
    assert agent.children() == {}


def test_it_fails_an_instance_whose_port_another_program_holds(agent):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        instance = wait_status(command_instance("taken", port=port), "failed")

    assert instance.status_reason == f"port {port} on 127.0.0.1 is in use by another program"
    assert instance.pid is None
    assert not (agent.log_dir / "taken.log").exists()  # nothing was started
    assert agent.children() == {}


def test_it_fails_a_llama_cpp_instance_whose_model_file_does_not_exist(
    agent, llama_server, tmp_path
):
    missing = tmp_path / "missing.gguf"
    instance = llama_instance("nomodel", llama_server, missing, max_restarts=1, restart_delay=0)

    instance = wait_status(instance, "failed")
    assert instance.restart_count == 1
    assert instance.exit_code == 1
    assert instance.status_reason.startswith("exited with code 1; the log ends with:\n")
    assert f"error: failed to load model '{missing}'" in instance.status_reason
    assert agent.children() == {}


def test_it_fails_an_executable_that_does_not_exist(agent, tmp_path):
    absent = tmp_path / "no-such-server"
    instance = command_instance("absent", f"{absent} --port {{port}}")

    instance = wait_status(instance, "failed")
    assert instance.status_reason == f"executable not found: {absent}"


def test_it_fails_an_instance_that_never_gets_ready_and_leaves_no_process(agent):
    command = '{python} -c "import time; print(1, flush=True); time.sleep(600)"'
    instance = wait_status(command_instance("mute", command, ready_timeout=1), "failed")

    # Its output shows it ran; it was killed for not answering in time.
    assert instance.status_reason == "not ready within 1 s; the log ends with:\n1"
    assert instance.exit_code in (-15, -9)  # SIGTERM, then SIGKILL at once
    assert instance.pid is None
    wait_for(lambda: not agent.children(), 10, "no process left")


FLOOD = (
    '{python} -c "import sys, time\n'
    "for i in range(300):\n"
    "    sys.stdout.write(str(i).zfill(6) + 20000 * 'x' + chr(10)); sys.stdout.flush()\n"
    "    time.sleep(0.002)\n"
    "while True: print('flood done', flush=True); time.sleep(0.1)\""
)


def test_a_child_that_floods_its_log_leaves_files_of_bounded_size(agent_factory):
    max_bytes = 65536
    agent = agent_factory(INSTANCE_LOG_MAX_BYTES=str(max_bytes), INSTANCE_LOG_BACKUPS="2").start()
    command_instance("flood", FLOOD)  # about 6 MB, then a line now and then; never ready
    live = agent.log_dir / "flood.log"

    # Rotation truncates the live file once the flood is over: it ends small.
    def settled():
        tail = agent.get("/instances/flood/logs", lines=1).text
        return tail == "flood done\n" and live.stat().st_size <= max_bytes

    wait_for(settled, 60, "the flood to end and its log to be rotated")
    backup = agent.log_dir / "flood.log.1"
    assert 0 < backup.stat().st_size <= max_bytes
    older = agent.log_dir / "flood.log.2"
    assert not older.exists() or older.stat().st_size <= max_bytes
    assert not (agent.log_dir / "flood.log.3").exists()
    # A backup starts at a line: what it keeps is the flood's tail.
    lines = backup.read_text().splitlines()
    assert all(len(line) == 20006 for line in lines if line != "flood done")


WHOLE_API = [("GET", "/health"), ("POST", "/reconcile"), ("GET", "/instances/talker/logs")]


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_it_serves_the_last_log_lines_to_holders_of_its_key_only(agent):
    command = "{python} -c \"import time; [print('line', i, flush=True) for i in range(5)]; time.sleep(600)\""
    command_instance("talker", command)
    wait_for(lambda: agent.get("/instances/talker/logs").text.count("line") == 5, 60, "lines")

    reply = agent.get("/instances/talker/logs", lines=2)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.text == "line 3\nline 4\n"
    assert agent_logs("local", "talker", lines=1) == "line 4\n"
    assert agent_logs("local", "talker") == "".join(f"line {i}\n" for i in range(5))
    for bad in ("0", "-1", "two", "100001", "1.5", "", "٣"):
        assert agent.get("/instances/talker/logs", lines=bad).status_code == 400, bad
    assert agent.get("/instances/talker/logs", lines=100000).status_code == 200
    assert agent.get("/instances/nobody/logs").status_code == 404
    assert agent.get("/instances/..%2Ftalker/logs").status_code == 404
    assert agent_logs("local", "nobody") == ""
    key = agent.env["INSTANCE_AGENT_KEY"]
    for given in ({}, {"Authorization": "Bearer"}, {"Authorization": key}, _bearer("wrong")):
        for method, path in WHOLE_API:
            reply = httpx.request(method, f"{agent.url}{path}", headers=given, timeout=10)
            assert reply.status_code == 401, (path, given)
            assert "line" not in reply.text
    reply = httpx.get(f"{agent.url}/health", headers=_bearer(f"{key}x"), timeout=10)
    assert reply.status_code == 401
    assert agent.env["INSTANCE_AGENT_KEY"] not in agent.log()


def test_it_stops_the_process_of_a_deleted_instance(agent):
    instance = wait_status(command_instance("doomed"), "running")
    pid, started = instance.pid, instance.pid_started

    instance.delete()
    wait_for(lambda: not is_running(pid, started), 60, "the process to stop")
    assert agent.children() == {}
    assert "doomed" not in agent.health()["instances"]


SHOW_ENVIRONMENT = (
    '{python} -c "import os, time; '
    "print([name for name in ('SECRET_KEY', 'INSTANCE_AGENT_KEY', 'DATABASE_URL', "
    "'FIELD_ENCRYPTION_KEY', 'PORT', 'HOST', 'ADMIN_PASSWORD', 'GREETING') "
    "if name in os.environ], os.environ.get('GREETING'), os.environ.get('PATH') is not None, "
    'flush=True); time.sleep(600)"'
)


def test_a_server_gets_its_own_environment_but_not_switchboards_settings(agent_factory):
    # make run's PORT and HOST would be read by llama-cpp-python's server as its own.
    agent = agent_factory(PORT="8011", HOST="127.0.0.1", ADMIN_PASSWORD="s3cret").start()
    command_instance("env", SHOW_ENVIRONMENT, environment={"GREETING": "hello"})

    # INSTANCE_PASS_ENV passes the test's marker on: the fixture finds the process.
    wait_for(agent.children, 60, "the process to start")
    log = wait_for(lambda: agent.get("/instances/env/logs").text, 60, "its output")
    assert log == "['GREETING'] hello True\n"


def test_a_failed_instance_runs_again_only_when_started_or_restarted(agent, tmp_path):
    flag = tmp_path / "can-serve"
    command = f"sh -c 'test -f {flag} || exit 4; exec {{python}} -m fakeupstream --port {{port}}'"
    instance = wait_status(command_instance("retry", command, max_restarts=0), "failed")
    assert instance.status_reason == "exited with code 4"
    flag.touch()

    # Many polls later (another instance started and became ready) it has not been retried.
    wait_status(command_instance("witness"), "running")
    assert Instance.objects.get(name="retry").status == "failed"
    assert agent.log().count("Started instance retry ") == 1

    # The API's start (its desired state was already running) tries again.
    instance_start(instance=instance)
    instance = wait_status(instance, "running")
    assert instance.restart_count == 0 and instance.status_reason == ""
    assert agent.log().count("Started instance retry ") == 2

    # So does a restart: this one fails, the next one runs.
    flag.unlink()
    instance_restart(instance=instance)
    wait_status(instance, "failed")
    flag.touch()
    instance_restart(instance=instance)
    assert wait_status(instance, "running").status_reason == ""
    assert agent.log().count("Started instance retry ") == 4
