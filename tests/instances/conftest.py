"""The real instance agent (`manage.py instance_agent`) as a subprocess on the test database.

Every process the agent starts inherits its environment, and so a marker of the
test's own: ``marked_processes`` finds them through /proc (pid and start time),
whatever the agent says, and the fixture kills any that a failing test left.
"""

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from ai.models import Instance, Node
from tests.instances.stand_in_agent import point_local_agent
from tests.servers import TcpProxy, free_port, wait_for
from tests.workers import port_range

ROOT = Path(__file__).resolve().parents[2]
AGENT_KEY = "tests-only-agent-key-3c9d0e1f"
MARKER = "SWITCHBOARD_TEST_AGENT"
FAKE_UPSTREAM = "{python} -m fakeupstream --port {port}"


def database_url() -> str:
    """The test database as a DATABASE_URL for another process (as start_gateway does)."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (state = [0], pgrp = [2], start = [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def is_running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` (clock ticks) still runs."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in "ZX" and int(fields[19]) == started


def group_members(pgid: int) -> set[int]:
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = proc_stat(int(stat.parent.name))
        if fields and fields[0] not in "ZX" and int(fields[2]) == pgid:
            members.add(int(stat.parent.name))
    return members


def marked_processes(marker: str) -> dict[int, int]:
    """Live processes whose environment holds ``marker``: pid -> start time."""
    found = {}
    needle = f"{MARKER}={marker}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            is_marked = needle in environ.read_bytes().split(b"\0")
        except OSError:
            continue
        fields = proc_stat(pid)
        if is_marked and fields and fields[0] not in "ZX":
            found[pid] = int(fields[19])
    return found


class AgentProcess:
    """`manage.py instance_agent` on the test database, its API at a free port."""

    def __init__(self, tmp_path: Path, *, database: str | None = None, **env: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_dir = tmp_path / "instances"
        self.output = tmp_path / "agent.out"
        self.marker = uuid.uuid4().hex
        self.env = {
            **os.environ,
            "DATABASE_URL": database or database_url(),
            "INSTANCE_AGENT_URL": self.url,
            "INSTANCE_AGENT_KEY": AGENT_KEY,
            "INSTANCE_LOG_DIR": str(self.log_dir),
            "INSTANCE_STOP_GRACE": "1",
            "INSTANCE_POLL_INTERVAL": "0.1",
            "INSTANCE_PORT_RANGE": port_range(21000),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            MARKER: self.marker,
            "INSTANCE_PASS_ENV": MARKER,
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self, *args: str) -> "AgentProcess":
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "instance_agent", *args],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.health, 60, "the agent to answer /health")
        return self

    def run_to_exit(self) -> subprocess.CompletedProcess:
        """Run the agent in the foreground, for one that should refuse to start."""
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "instance_agent"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def health(self) -> dict | None:
        if self.process.poll() is not None:
            raise AssertionError(f"the agent exited:\n{self.log()}")
        try:
            reply = self.get("/health")
        except httpx.HTTPError:
            return None
        return reply.json() if reply.status_code == 200 else None

    def get(self, path: str, *, key: str | None = AGENT_KEY, **params) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.get(f"{self.url}{path}", params=params, headers=headers, timeout=10)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def children(self) -> dict[int, int]:
        """The live processes the agent started (and theirs), found through /proc."""
        own = self.process.pid if self.process else None
        return {
            pid: started for pid, started in marked_processes(self.marker).items() if pid != own
        }

    def kill(self) -> None:
        """kill -9: the agent gets no chance to do anything."""
        self.process.kill()
        self.process.wait(timeout=30)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()
        for pid in self.children():  # what a failing test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def agent_factory(transactional_db, tmp_path, settings):
    """Agents of this test (not started). This host's node points at the last one made;
    ``node="name"`` makes the agent of another node (its own row, its own log directory)."""
    made = []

    def make(*, node: str | None = None, **kwargs) -> AgentProcess:
        if node is None:
            agent = AgentProcess(tmp_path, **kwargs)
            point_local_agent(settings, agent.url, AGENT_KEY)
        else:
            (tmp_path / node).mkdir(exist_ok=True)
            agent = AgentProcess(tmp_path / node, INSTANCE_NODE=node, **kwargs)
            Node.objects.update_or_create(
                name=node,
                defaults={
                    "address": agent.url,
                    "api_key": AGENT_KEY,
                    "instance_host": "127.0.0.1",
                    "port_range": agent.env["INSTANCE_PORT_RANGE"],
                },
            )
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.cleanup()


@pytest.fixture
def agent(agent_factory):
    """A running agent."""
    return agent_factory().start()


def command_instance(name: str, command: str = FAKE_UPSTREAM, **fields) -> Instance:
    """An instance of the command backend that should run (the fake upstream by default)."""
    fields.setdefault("desired_state", "running")
    return Instance.objects.create(name=name, backend="command", command_override=command, **fields)


def wait_status(instance: Instance, *statuses: str, timeout: float = 60) -> Instance:
    """Wait until the agent has put ``instance`` in one of ``statuses``; the fresh row."""

    def reached():
        instance.refresh_from_db()
        return instance.status in statuses

    try:
        wait_for(reached, timeout, f"{instance.name} to be {' or '.join(statuses)}")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: it is {instance.status} ({instance.status_reason!r})"
        ) from None
    return instance


LLAMA_SERVER_SHIM = '''#!{python}
"""A stand-in for llama.cpp's llama-server: its flags, its failure on a missing model,
its /health; the fake upstream answers the rest."""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("-m", required=True)
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
args, _ = parser.parse_known_args()
print("llama-server", *sys.argv[1:], flush=True)
if not os.path.isfile(args.m):
    print(f"error: failed to load model '{{args.m}}'", flush=True)
    sys.exit(1)

from aiohttp import web
from fakeupstream.app import create_app


async def health(request):
    return web.json_response({{"status": "ok"}})


app = create_app()
app.router.add_get("/health", health)
web.run_app(app, host=args.host, port=args.port, print=None)
'''


@pytest.fixture
def llama_server(tmp_path) -> Path:
    """The llama-server shim, executable, in the test's directory."""
    path = tmp_path / "llama-server"
    path.write_text(LLAMA_SERVER_SHIM.format(python=sys.executable))
    path.chmod(0o755)
    return path


def llama_instance(name: str, shim: Path, model: Path, **fields) -> Instance:
    """A llama_cpp instance run by the shim (which imports the fake upstream from ROOT)."""
    fields.setdefault("desired_state", "running")
    return Instance.objects.create(
        name=name,
        backend="llama_cpp",
        command_override=str(shim),
        model_path=str(model),
        environment={"PYTHONPATH": str(ROOT)},
        **fields,
    )


class DatabaseSwitch:
    """The test database behind something a test can cut and restore.

    PostgreSQL: a TCP proxy that, cut, accepts connections and never answers (a
    vanished host). SQLite: a symbolic link to the file that, cut, points into a
    directory that does not exist, so opening the database fails.
    """

    def __init__(self, tmp_path: Path) -> None:
        from django.db import connection

        db = connection.settings_dict
        self.proxy = None
        if connection.vendor == "sqlite":
            self.real = Path(db["NAME"])
            self.link = tmp_path / "database.sqlite3"
            self.link.symlink_to(self.real)
            self.url = f"sqlite:///{self.link}"
        else:
            self.proxy = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)).start()
            self.url = f"postgres://{db['USER']}@127.0.0.1:{self.proxy.port}/{db['NAME']}"

    def _point_at(self, target: Path) -> None:
        self.link.unlink()
        self.link.symlink_to(target)

    def cut(self) -> None:
        if self.proxy:
            self.proxy.cut()
        else:
            self._point_at(self.link.parent / "no-such-directory" / "database.sqlite3")

    def restore(self) -> None:
        if self.proxy:
            self.proxy.restore()
        else:
            self._point_at(self.real)

    def close(self) -> None:
        if self.proxy:
            self.proxy.stop()
