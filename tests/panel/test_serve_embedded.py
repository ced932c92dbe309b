"""`make run`'s command, end to end: fake upstream, demo model, web, worker, beat and the
instance agent."""

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.servers import (
    ScratchDatabase,
    descendants,
    free_port,
    postgres_admin_url_or_skip,
    redis_url_or_skip,
    send_slowly_until_closed,
    still_running,
)
from tests.servers import wait_for as _wait_for
from tests.training.runner_world import enqueue_code

ROOT = Path(__file__).resolve().parents[2]


def _refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _query(db: Path, sql: str):
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


@contextlib.contextmanager
def _launch(data_dir: Path, **env_vars: str):
    """`make run` (migrate, then serve_embedded) in a subprocess, with its environment.

    Like the Makefile it sets DEBUG=true and no secrets, so the command generates and
    keeps its own keys in DATA_DIR. The environment names the database and Redis
    explicitly (none means the embedded SQLite file and no Redis).
    """
    web_port, fake_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY"}
        and not k.startswith("FIELD_ENCRYPTION")
    }
    env.update(
        DEBUG="true",
        DATA_DIR=str(data_dir),
        CELERY_HEARTBEAT_INTERVAL="1",
        HEALTH_CHECK_INTERVAL="1",
        HEALTH_CHECK_TICK="1",
        ADMIN_USERNAME="admin",
        ADMIN_PASSWORD="demo-password-1",
        PYTHONUNBUFFERED="1",
        INSTANCE_AGENT_URL=f"http://127.0.0.1:{free_port()}",
        INSTANCE_STOP_GRACE="3",
        **env_vars,
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run(
        [*manage, "migrate", "--noinput"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = open(data_dir / "run.log", "w+")  # noqa: SIM115 - read back by the test
    process = subprocess.Popen(
        [
            *manage,
            "serve_embedded",
            "--port",
            str(web_port),
            "--fake-upstream-port",
            str(fake_port),
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process, web_port, fake_port, log, env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.fixture
def embedded(tmp_path):
    with _launch(tmp_path, HTTP_HEADER_TIMEOUT="2", HTTP_BODY_TIMEOUT="2") as (
        process,
        web_port,
        fake_port,
        log,
        env,
    ):
        yield process, web_port, fake_port, tmp_path, log, env


def _stop_and_check_everything_stopped(process, web_port: int, children: int) -> None:
    """Ctrl-C the launcher: it exits 0 and leaves no process of its tree running."""
    found = descendants(process.pid)
    assert [ppid for ppid, _ in found.values()].count(process.pid) == children
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    # A grandchild (a Celery pool process) may outlive its parent by a moment.
    _wait_for(lambda: not still_running(found), 10, "every child of the launcher to exit")
    assert _refuses(web_port)


def _log(log) -> str:
    log.flush()
    return Path(log.name).read_text()


def test_it_runs_web_worker_beat_and_the_demo_model_until_ctrl_c(embedded):
    process, web_port, fake_port, data_dir, log, env = embedded
    _wait_for(lambda: "Switchboard is running" in _log(log), 60, "the start banner")
    output = _log(log)
    assert "admin password: demo-password-1" in output
    assert "demo API key:   sb-" in output
    # Like `make run`: DEBUG on, no secrets given, so it made its own and kept them.
    for name in ("secret-key", "field-encryption-key"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600

    base = f"http://127.0.0.1:{web_port}"
    login = _wait_for(lambda: _get(f"{base}/accounts/login/"), 30, "the sign-in page")
    assert login.status_code == 200
    assert _get(f"{base}/static/admin/css/base.css").status_code == 200
    assert _get(f"http://127.0.0.1:{fake_port}/v1/models").status_code == 200

    # The printed key works through the web server against the demo model.
    key, reply = _chat_with_printed_key(base, output)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "demo-chat"
    assert f"curl {base}/v1/chat/completions -H 'Authorization: Bearer {key}'" in output

    # The web server times out requests that never finish (slowloris), yet a stream
    # that outlasts both read timeouts is relayed whole.
    answer = send_slowly_until_closed(
        web_port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", trickle=b"abc" * 200
    )
    assert answer.startswith(b"HTTP/1.1 408 ")
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "demo-chat",
            "stream": True,
            "messages": [{"role": "user", "content": "Hello"}],
            "fake_upstream": {"chunk_delay_ms": 250, "tokens": 16},
        },
        timeout=30,
    ) as stream:
        assert stream.status_code == 200
        assert "data: [DONE]" in stream.read().decode()

    db = data_dir / "switchboard.sqlite3"
    assert _query(db, "SELECT name FROM ai_aimodel") == [("demo-chat",)]
    upstream_url = _query(db, "SELECT base_url FROM ai_upstream")[0][0]
    assert upstream_url == f"http://127.0.0.1:{fake_port}/v1"
    # Beat schedules the heartbeat task every second and the worker runs it.
    _wait_for(lambda: _query(db, "SELECT name FROM panel_heartbeat"), 60, "a worker heartbeat")

    # Health checks: the demo upstream turns healthy, unhealthy when its server
    # stops, and healthy again when it is back.
    def status():
        rows = _query(db, "SELECT health_status FROM ai_upstream")
        return rows[0][0] if rows else None

    _wait_for(lambda: status() == "healthy", 60, "the demo upstream to be healthy")
    subprocess.run(["pkill", "-f", f"fakeupstream --port {fake_port}"], check=True)
    _wait_for(lambda: status() == "unhealthy", 60, "the stopped upstream to be unhealthy")
    revived = subprocess.Popen(
        [sys.executable, "-m", "fakeupstream", "--port", str(fake_port)], cwd=ROOT
    )
    try:
        _wait_for(lambda: status() in ("healthy", "degraded"), 60, "the upstream to come back")
    finally:
        revived.terminate()
        revived.wait(timeout=10)

    # The instance agent runs a local model server (the fake upstream as a command) as
    # a child of its own, in the launcher's tree.
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", CREATE_INSTANCE],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    instance = _wait_for(
        lambda: _query(db, "SELECT pid FROM ai_instance WHERE status = 'running'"),
        60,
        "the instance to run",
    )
    assert instance[0][0] in descendants(process.pid)
    # Its node's row was made by the launcher, from the settings the agent runs with.
    assert _query(db, "SELECT name, address, instance_host FROM ai_node") == [
        ("local", env["INSTANCE_AGENT_URL"], "127.0.0.1")
    ]

    # Its worker takes the training queue too: a training job runs to success.
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", enqueue_code("ok")],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    _wait_for(
        lambda: _query(db, "SELECT status FROM ai_trainingjob") == [("succeeded",)],
        60,
        "the training job to succeed",
    )

    # The launcher's children now: web, worker, beat and the instance agent (the fake
    # upstream was replaced); the instance is a grandchild, stopped with the rest.
    _stop_and_check_everything_stopped(process, web_port, children=4)
    assert _query(db, "SELECT status, status_reason FROM ai_instance") == [
        ("stopped", "agent stopped")
    ]


CREATE_INSTANCE = """
from ai.models import Instance
Instance.objects.create(
    name="local-fake",
    backend="command",
    command_override="{python} -m fakeupstream --port {port}",
    desired_state="running",
)
"""


def _get(url):
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def test_it_runs_on_postgresql_and_redis_with_a_live_worker_and_beat(tmp_path):
    """Issue 11: with DATABASE_URL and REDIS_URL the worker died at start (kombu needed a
    newer redis-py) and the launcher then stopped everything."""
    redis_url = redis_url_or_skip()
    admin_url = postgres_admin_url_or_skip()
    tag = uuid.uuid4().hex[:10]
    with (
        ScratchDatabase(admin_url, f"sb_launch_{tag}") as database,
        _launch(
            tmp_path,
            DATABASE_URL=database.url,
            REDIS_URL=redis_url,
            CACHE_KEY_PREFIX=f"sb-launch-{tag}",
        ) as (process, web_port, _, log, _),
    ):
        _wait_for(lambda: "Switchboard is running" in _log(log), 90, "the start banner")
        base = f"http://127.0.0.1:{web_port}"

        def alive():
            response = _get(f"{base}/api/status")
            if response is None or response.status_code != 200:
                return None
            body = response.json()
            return body if body.get("celery", {}).get("beat_and_worker_alive") else None

        status = _wait_for(alive, 90, "a fresh heartbeat from the worker, in /api/status")
        assert status["database"] == {"reachable": True}
        assert status["redis"] == {"configured": True, "reachable": True}

        _, reply = _chat_with_printed_key(base, _log(log))
        assert reply.status_code == 200, reply.text
        with psycopg.connect(database.url) as conn:
            heartbeats = conn.execute("SELECT name FROM panel_heartbeat").fetchall()
        assert heartbeats == [("beat",)]

        assert process.poll() is None, _log(log)
        _stop_and_check_everything_stopped(process, web_port, children=5)


def _chat_with_printed_key(base: str, output: str) -> tuple[str, httpx.Response]:
    """The demo key ``make run`` printed, and a chat completion made with it."""
    key = output.split("demo API key:   ")[1].split()[0]
    reply = httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]},
        timeout=10,
    )
    return key, reply
