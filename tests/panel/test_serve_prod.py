"""`make run-prod` (issue 19): the production topology under supervisord, on PostgreSQL and
Redis: web processes on one shared socket, two workers, beat and the instance agent."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
import uvicorn
from cryptography.fernet import Fernet

from panel.http import TimeoutHttpToolsProtocol
from tests.servers import (
    ScratchDatabase,
    descendants,
    free_port,
    postgres_admin_url_or_skip,
    redis_url_or_skip,
    still_running,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
SUPERVISORCTL = Path(sys.executable).parent / "supervisorctl"
REDIS_DB = 11  # this test's own database on the Redis server: flushed, nothing else is

SEED = """
from accounts.models import Permission
from accounts.services import admin_ensure, apikey_create
from ai.services import demo_seed
user, _ = admin_ensure(username="ops", email="ops@example.com", password="ops-password-1")
demo_seed(upstream_base_url="{upstream}", user=user)
_, plain = apikey_create(user=user, name="run-prod", permissions=[Permission.READ, Permission.PROXY])
print("key:", plain)
"""


def _environment(data_dir: Path, **variables: str) -> dict[str, str]:
    """The test run's environment without its DEBUG, database and Redis, plus ``variables``."""
    dropped = {"DEBUG", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "HOST", "PORT"}
    dropped |= {"WEB_PROCESSES", "CELERY_WORKERS", "PROMETHEUS_MULTIPROC_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        DATA_DIR=str(data_dir),
        SECRET_KEY="run-prod-tests-secret-key-not-for-any-deployment",
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        PYTHONUNBUFFERED="1",
        **variables,
    )
    return env


def _serve_prod(env: dict[str, str], *args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "manage.py"), "serve_prod", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, **popen)


def _refusal(env: dict[str, str], *args: str) -> str:
    """serve_prod's one-line refusal (exit 2, nothing on stdout, no traceback)."""
    process = _serve_prod(env, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2, err.decode()
    assert out == b""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err.decode()
    return lines[0]


@pytest.mark.parametrize(
    ("variables", "missing"),
    [
        ({}, "DATABASE_URL naming PostgreSQL (postgres://...) and REDIS_URL:"),
        ({"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}, "needs REDIS_URL:"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "DATABASE_URL naming PostgreSQL"),
    ],
)
def test_it_refuses_to_start_without_postgresql_and_redis(tmp_path, variables, missing):
    line = _refusal(_environment(tmp_path, **variables))
    assert line.startswith("CommandError: serve_prod needs ")
    assert missing in line
    assert not (tmp_path / "prod").exists()


def test_it_refuses_a_port_that_something_else_listens_on(tmp_path):
    env = _environment(
        tmp_path,
        DATABASE_URL="postgres://nobody@127.0.0.1:1/none",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = _refusal(env, "--port", str(port))
    assert line == f"CommandError: Cannot listen on 127.0.0.1:{port}: Address already in use."
    assert not (tmp_path / "prod").exists()


def test_a_web_process_on_an_inherited_socket_sends_small_writes_at_once():
    """Under supervisord uvicorn gets its socket as ``--fd 0`` and takes it for a Unix one;
    the production protocol turns Nagle's algorithm off itself (a stream's chunks would
    otherwise wait for the previous one's ACK)."""
    listening = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        "panel.asgi:application",
        fd=listening.fileno(),
        http=TimeoutHttpToolsProtocol,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn to start on the inherited socket")
        with httpx.Client(
            base_url=f"http://{listening.getsockname()[0]}:{listening.getsockname()[1]}"
        ) as client:
            assert client.get("/healthz").status_code == 200
            (connection,) = server.server_state.connections  # kept alive by the client
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listening.close()


@contextlib.contextmanager
def _production(tmp_path: Path):
    """serve_prod with 2 web processes on a scratch PostgreSQL database and Redis db 11,
    and the fake upstream; yields (process, port, env, database URL, log path)."""
    redis_url = urlunsplit(urlsplit(redis_url_or_skip())._replace(path=f"/{REDIS_DB}"))
    admin_url = postgres_admin_url_or_skip()
    port, upstream_port = free_port(), free_port()
    tag = uuid.uuid4().hex[:10]
    flush = redis.Redis.from_url(redis_url).flushdb
    with ScratchDatabase(admin_url, f"runprod_{tag}") as database:
        flush()
        env = _environment(
            tmp_path,
            DATABASE_URL=database.url,
            REDIS_URL=redis_url,
            CACHE_KEY_PREFIX=f"sb-runprod-{tag}",
            CELERY_HEARTBEAT_INTERVAL="1",
            INSTANCE_AGENT_URL=f"http://127.0.0.1:{free_port()}",
            INSTANCE_STOP_GRACE="3",
        )
        upstream = subprocess.Popen(
            [sys.executable, "-m", "fakeupstream", "--port", str(upstream_port)], cwd=ROOT
        )
        log_path = tmp_path / "serve_prod.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below, read back by the test
        process = _serve_prod(
            env, "--port", str(port), "--web-processes", "2", stdout=log, stderr=subprocess.STDOUT
        )
        try:
            env["FAKE_UPSTREAM"] = f"http://127.0.0.1:{upstream_port}/v1"
            yield process, port, env, database.url, log_path
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
            upstream.terminate()
            upstream.wait(timeout=10)
            log.close()
            flush()


def _supervised(env: dict[str, str]) -> dict[str, int | None]:
    """`supervisorctl status` as the README shows it: program name -> pid (None unless
    RUNNING)."""
    config = Path(env["DATA_DIR"]) / "prod" / "supervisord.conf"
    listing = subprocess.run(
        [str(SUPERVISORCTL), "-c", str(config), "status"], capture_output=True, text=True
    ).stdout
    programs = {}
    for line in listing.splitlines():
        name, state, *rest = line.split()
        programs[name] = int(rest[1].rstrip(",")) if state == "RUNNING" else None
    return programs


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes


def _server_side_inode(port: int, client_port: int) -> str:
    """The inode of the server's end of the loopback connection from ``client_port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == port and int(remote, 16) == client_port:
            return fields[9]
    raise AssertionError(f"no server end for the connection from port {client_port}")


def _answering_pid(port: int, web_pids: set[int]) -> int:
    """Which web process answered a request on a new connection (it holds that
    connection's socket; the listening one they all share)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        inode = _server_side_inode(port, sock.getsockname()[1])
        (owner,) = [pid for pid in web_pids if inode in _socket_inodes(pid)]
        return owner


def _ready(base: str):
    try:
        response = httpx.get(f"{base}/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


# The whole topology starts (a PostgreSQL migrate from nothing), runs and stops: about a
# minute and a quarter here, so more than the suite's two minutes allow on a slow runner.
@pytest.mark.timeout(300)
def test_it_runs_web_workers_beat_and_the_agent_until_sigterm(tmp_path):
    with _production(tmp_path) as (process, port, env, database_url, log_path):
        base = f"http://127.0.0.1:{port}"

        def ready():
            assert process.poll() is None, log_path.read_text()
            return _ready(base)

        assert wait_for(ready, 120, "/readyz to answer 200").json() == {
            "ready": True,
            "database": True,
            "redis": True,
        }
        # Static files and pages without collectstatic, as with DEBUG off in production.
        assert httpx.get(f"{base}/static/admin/css/base.css").status_code == 200
        assert httpx.get(f"{base}/accounts/login/").status_code == 200
        programs = wait_for(
            lambda: (found := _supervised(env)) and all(found.values()) and found,
            60,
            "every program to run",
        )
        assert set(programs) == {"web:web-0", "web:web-1", "worker-0", "worker-1"} | {
            "beat",
            "agent",
        }
        assert set(descendants(process.pid)) >= set(programs.values())

        # The web processes share the port: connections are answered by both.
        web_pids = {programs["web:web-0"], programs["web:web-1"]}
        answering: set[int] = set()
        for _ in range(200):
            answering.add(_answering_pid(port, web_pids))
            if answering == web_pids:
                break
        assert answering == web_pids

        # A chat completion through a seeded model and key, against the fake upstream.
        seeded = subprocess.run(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "shell",
                "-c",
                SEED.format(upstream=env["FAKE_UPSTREAM"]),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        key = seeded.stdout.split("key: ")[1].split()[0]
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "demo-chat"

        def query(sql: str):
            with psycopg.connect(database_url) as conn:
                return conn.execute(sql).fetchall()

        usage = wait_for(
            lambda: query("SELECT model_name, status, http_status FROM ai_usageevent"),
            30,
            "the usage event",
        )
        assert usage == [("demo-chat", "ok", 200)]

        # A second serve_prod on the same DATA_DIR is refused, and this one carries on.
        config = (tmp_path / "prod" / "supervisord.conf").read_text()
        line = _refusal(env, "--port", str(free_port()))
        assert "serve_prod already runs with this DATA_DIR" in line
        assert (tmp_path / "prod" / "supervisord.conf").read_text() == config
        assert _supervised(env) == programs

        # Beat schedules the heartbeat every second and a worker runs it.
        def alive():
            status = httpx.get(f"{base}/api/status", timeout=5).json()
            return status["celery"]["beat_and_worker_alive"]

        wait_for(alive, 60, "a fresh heartbeat from beat and a worker")
        assert query("SELECT name FROM panel_heartbeat") == [("beat",)]

        # A web process killed: supervisord starts another, and the port answers all along.
        os.kill(programs["web:web-0"], signal.SIGKILL)
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        restarted = wait_for(
            lambda: (
                (pid := _supervised(env).get("web:web-0")) not in (None, programs["web:web-0"])
                and pid
            ),
            30,
            "supervisord to restart web-0",
        )
        assert _answering_pid(port, {restarted, programs["web:web-1"]})
        assert wait_for(lambda: _ready(base), 30, "/readyz after the restart")

        # SIGTERM while a stream is in flight: the web process relays it to its end, then
        # every child stops and serve_prod exits 0.
        found = descendants(process.pid)
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "demo-chat",
                "stream": True,
                "messages": [{"role": "user", "content": "Hello"}],
                "fake_upstream": {"chunk_delay_ms": 200, "tokens": 10},
            },
            timeout=60,
        ) as stream:
            assert stream.status_code == 200
            chunks = stream.iter_text()
            relayed = next(chunks)
            process.send_signal(signal.SIGTERM)
            relayed += "".join(chunks)
        assert relayed.rstrip().endswith("data: [DONE]"), relayed
        assert process.wait(timeout=120) == 0, log_path.read_text()
        wait_for(lambda: not still_running(found), 10, "every child of serve_prod to exit")
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        # The stream's usage was written before its web process stopped.
        assert query("SELECT is_stream, status FROM ai_usageevent ORDER BY created_at") == [
            (False, "ok"),
            (True, "ok"),
        ]
        log = log_path.read_text()
        assert "Traceback" not in log, log
