"""The production topology under soak: `manage.py serve_prod`, its processes and their memory.

``ServeProd`` runs the launcher (web processes on one shared socket, Celery workers,
beat and the instance agent under supervisord) and asks supervisord for its
programs' PIDs. ``HandMade`` starts the same processes itself (uvicorn ``--fd`` on one
socket, restarted when one dies, as supervisord does), for a tree without
``serve_prod``. Both sample each program's memory (RSS of its process tree) from /proc.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants, in KiB (0 once gone)."""
    total = 0
    for member in [pid, *_descendants(pid)]:
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = Path(f"/proc/{parent}/task").iterdir()
            children = [
                int(child) for task in tasks for child in (task / "children").read_text().split()
            ]
        except OSError:
            continue
        found += children
        todo += children
    return found


class Topology:
    """What the soak needs of the processes it tests."""

    url = ""

    def programs(self) -> dict[str, int]:
        """Running programs by name (web-0.., worker-0.., beat, agent) and their PIDs."""
        raise NotImplementedError

    def web_programs(self) -> list[str]:
        return sorted(name for name in self.programs() if name.startswith("web-"))

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60.0) -> int:
        """The new PID of ``name`` once its supervisor has started it again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.programs().get(name)
            if pid and pid != old_pid:
                return pid
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not restarted within {timeout:.0f} s")


class ServeProd(Topology):
    """`manage.py serve_prod`: migrate, then supervisord with every program."""

    def __init__(self, env: dict, *, web: int, workers: int, log: Path) -> None:
        self.env, self.web, self.workers, self.log = env, web, workers, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = Path(env["DATA_DIR"]) / "prod" / "supervisord.conf"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def is_available(env: dict) -> bool:
        return (ROOT / "panel" / "management" / "commands" / "serve_prod.py").exists()

    def start(self) -> ServeProd:
        command = [sys.executable, "manage.py", "serve_prod", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--web-processes", str(self.web)]
        if self.workers != 2 and "--workers" in _help(self.env):
            command += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def programs(self) -> dict[str, int]:
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), "status"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        ).stdout
        found = {}
        for line in out.splitlines():
            match = re.match(r"(?:[\w-]+:)?([\w-]+)\s+RUNNING\s+pid (\d+)", line)
            if match:
                found[_program_name(match.group(1))] = int(match.group(2))
        return found

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _program_name(name: str) -> str:
    """supervisord's program names as the soak reports them: worker-0, web-1, beat, agent."""
    name = name.replace("_", "-")
    if name.startswith(("celery-worker", "celeryworker")):
        name = "worker" + name.removeprefix("celery-worker").removeprefix("celeryworker")
    if name.startswith("celery-beat"):
        name = "beat"
    if name.startswith("instance-agent"):
        name = "agent"
    return name


def _help(env: dict) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", "serve_prod", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    ).stdout


class HandMade(Topology):
    """The same programs, started and kept running by this process (no supervisord)."""

    def __init__(self, env: dict, *, web: int, workers: int, log: Path) -> None:
        self.env, self.log = env, log
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.set_inheritable(True)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.commands = {f"web-{i}": self._web_command() for i in range(web)}
        for i in range(workers):
            self.commands[f"worker-{i}"] = [
                *("-m", "celery", "-A", "panel", "worker", "-Q", "celery,training"),
                *("--concurrency", "1", "-n", f"soak-{i}@%h", "-l", "warning"),
            ]
        schedule = str(Path(env["DATA_DIR"]) / "celerybeat-schedule")
        self.commands["beat"] = ["-m", "celery", "-A", "panel", "beat", "-s", schedule]
        self.commands["beat"] += ["-l", "warning"]
        self.running: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def _web_command(self) -> list[str]:
        from panel.http import PROTOCOL

        return [
            *("-m", "uvicorn", "panel.asgi:application", "--fd", str(self.sock.fileno())),
            *("--http", PROTOCOL, "--timeout-keep-alive", "5", "--lifespan", "on"),
            *("--no-access-log", "--log-level", "warning"),
        ]

    def start(self) -> HandMade:
        with self.log.open("w"):
            pass
        for name in self.commands:
            self._spawn(name)
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _spawn(self, name: str) -> None:
        self.running[name] = subprocess.Popen(
            [sys.executable, *self.commands[name]],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            pass_fds=(self.sock.fileno(),),
            start_new_session=True,
        )

    def _watch(self) -> None:
        while not self.stopping.wait(0.2):
            with self.lock:
                for name, process in list(self.running.items()):
                    if process.poll() is not None and not self.stopping.is_set():
                        self._spawn(name)

    def programs(self) -> dict[str, int]:
        with self.lock:
            return {name: p.pid for name, p in self.running.items() if p.poll() is None}

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            for process in self.running.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in self.running.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        self.sock.close()


class MemorySampler:
    """Every ``interval`` seconds, the RSS of each web and worker program's process tree."""

    def __init__(self, topology: Topology, interval: float) -> None:
        self.topology, self.interval = topology, interval
        self.samples: dict[tuple[str, int], list[tuple[float, int]]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.topology.programs().items():
            if name.startswith(("web-", "worker-")):
                rss = tree_rss_kib(pid)
                if rss:
                    self.samples.setdefault((name, pid), []).append((now, rss))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
