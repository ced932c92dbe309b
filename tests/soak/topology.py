"""The production topology under soak: `manage.py serve_prod`, its processes and their memory.

``ServeProd`` runs the launcher (web processes on one shared socket, Celery workers,
beat and the instance agent under supervisord) and asks supervisord for its
programs' PIDs; ``MemorySampler`` samples each program's memory (the RSS of its
process tree) from /proc.
"""

from __future__ import annotations

import os
import re
import signal
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


class ServeProd:
    """`manage.py serve_prod`: migrate, then supervisord with every program."""

    def __init__(self, env: dict, *, web: int, workers: int, log: Path) -> None:
        self.env, self.web, self.workers, self.log = env, web, workers, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = Path(env["DATA_DIR"]) / "prod" / "supervisord.conf"
        self.process: subprocess.Popen | None = None

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

    def start(self) -> ServeProd:
        command = [sys.executable, "manage.py", "serve_prod", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--web-processes", str(self.web)]
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
        """Running programs by name (web-0.., worker-0.., beat, agent) and their PIDs.

        supervisorctl says ``web:web-0   RUNNING   pid 123, uptime 0:00:05``.
        """
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
                found[match.group(1)] = int(match.group(2))
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


class MemorySampler:
    """Every ``interval`` seconds, the RSS of each web and worker program's process tree."""

    def __init__(self, topology: ServeProd, interval: float) -> None:
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
