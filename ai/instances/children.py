"""The agent's children: one running server process each, and the state file that
lets the next agent find them after this one dies.

INSTANCE_LOG_DIR/agent-<node>.json lists every child the agent owns (name, pid,
start time, process group, port, start date). It is rewritten whenever that
set changes, so after ``kill -9`` of the agent its successor knows which live
processes are its own: the ones to re-adopt, the ones to kill.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models import DesiredState, InstanceStatus
from . import procs


@dataclass
class Child:
    """A server process the agent owns: its own (``popen``) or re-adopted (``popen`` None)."""

    name: str
    pid: int
    pid_started: int | None
    pgid: int
    port: int
    started_at: datetime.datetime
    ready_by: float = 0.0  # time.monotonic() by which it must answer its readiness URL
    popen: subprocess.Popen | None = field(default=None, repr=False)
    is_ready: bool = False

    def exited(self) -> bool:
        """Whether the process is gone (an own child is reaped here: never a zombie)."""
        if self.popen is not None:
            return self.popen.poll() is not None
        return not procs.is_alive(self.pid, self.pid_started)

    @property
    def exit_code(self) -> int | None:
        """The exit code (negative: the signal) of an own child; None when unknown."""
        return None if self.popen is None else self.popen.returncode

    def is_gone(self) -> bool:
        """The process has exited and no process of its group is left."""
        return self.exited() and not procs.group_alive(self.pgid)

    def row_fields(self) -> dict:
        """What an Instance row records of its process."""
        return {"pid": self.pid, "pid_started": self.pid_started}

    def as_record(self) -> dict:
        return {
            "name": self.name,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "pgid": self.pgid,
            "port": self.port,
            "started_at": self.started_at.isoformat(),
        }

    @classmethod
    def from_record(cls, record: dict) -> Child:
        return cls(
            name=record["name"],
            pid=int(record["pid"]),
            pid_started=record.get("pid_started"),
            pgid=int(record.get("pgid") or record["pid"]),
            port=int(record.get("port") or 0),
            started_at=datetime.datetime.fromisoformat(record["started_at"]),
        )


def exit_description(code: int | None) -> str:
    if code is None:
        return "exited (exit code unknown: the process was not the agent's own child)"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


async def stop_all(children: list[Child], *, grace: float) -> None:
    """SIGTERM each child's group, SIGKILL what is left after ``grace`` seconds, reap."""
    for child in children:
        procs.signal_group(child.pgid, signal.SIGTERM)
    await _wait_until_gone(children, grace)
    for child in children:
        procs.kill_group(child.pgid)
    # SIGKILL cannot be ignored: this wait is for the kernel, not for the child.
    await _wait_until_gone(children, 10)


async def _wait_until_gone(children: list[Child], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for _ in itertools.count():
        if all(child.is_gone() for child in children) or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.02)


def sort_previous(
    previous: list[Child], rows: list, *, owned: set[str]
) -> tuple[list[Child], list[Child]]:
    """A previous agent's live children: those to re-adopt (their row exists and should
    run, and none of ``owned`` has its name) and the strays to stop. Dead ones are dropped.

    The rows' own records (pid and start time) find children the state file missed;
    such a child leads its own group, as every child does.
    """
    by_name = {row.name: row for row in rows}
    found = {child.name: child for child in previous}
    for row in rows:
        if row.name not in found and row.pid and row.pid_started:
            found[row.name] = Child(
                name=row.name,
                pid=row.pid,
                pid_started=row.pid_started,
                pgid=row.pid,
                port=row.assigned_port or row.port or 0,
                started_at=row.started_at or datetime.datetime.now(datetime.UTC),
            )
    adopted, strays = [], []
    for child in found.values():
        row = by_name.get(child.name)
        if child.exited():
            continue
        if row is None or row.desired_state != DesiredState.RUNNING or child.name in owned:
            strays.append(child)
            continue
        child.started_at = row.started_at or child.started_at
        child.ready_by = time.monotonic() + row.ready_timeout
        child.is_ready = row.status == InstanceStatus.RUNNING
        adopted.append(child)
    return adopted, strays


def read_state(path: Path) -> list[Child]:
    """The children a previous agent recorded (none when it left no readable file)."""
    try:
        records = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [Child.from_record(record) for record in records]


def write_state(path: Path, children: list[Child]) -> None:
    """Record ``children`` atomically (a crash mid-write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps([child.as_record() for child in children], indent=1))
    os.replace(temporary, path)
