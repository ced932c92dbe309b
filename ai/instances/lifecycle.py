"""The agent's half that owns processes: it starts and stops its node's servers,
applies the restart policy, and records what it observed on their rows.

``Agent`` (``agent``) decides what to do each look; ``Scheduler`` (``scheduling``)
decides which instance gets a slot; only this class touches a process or writes
the observed half of a row.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shlex
import time
from functools import partial
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from panel.db import run_sync
from panel.localcache import bump_generation

from ..models import DesiredState, Instance, InstanceStatus
from . import backends, launch, logs, procs
from .children import Child, exit_description, stop_all, write_state

logger = logging.getLogger("switchboard.instances")

REASON_LOG_LINES = 20


class ProcessKeeper:
    """The children of settings.INSTANCE_NODE and the rows that record them."""

    def __init__(self) -> None:
        self.node = settings.INSTANCE_NODE
        self.host = settings.INSTANCE_HOST
        self.log_dir = Path(settings.INSTANCE_LOG_DIR)
        self.state_path = self.log_dir / f"agent-{self.node}.json"
        self.ports = procs.parse_port_range(settings.INSTANCE_PORT_RANGE)
        # The rows of the agent's last look (kept current by ``write``).
        self.rows: dict[str, Instance] = {}
        self.children: dict[str, Child] = {}
        # Processes a previous agent left, until the database says which to re-adopt.
        self.unclaimed: list[Child] | None = None
        self.restart_due: dict[str, float] = {}
        # The updated_at of each row this agent marked failed: a later one means a
        # service wrote it since (a start, an edit), which asks for a new attempt.
        self.failed_versions: dict[str, datetime.datetime] = {}
        self.changed = asyncio.Event()  # set (and replaced) at every change of a row

    # --- The restart policy -----------------------------------------------------------

    def _is_retry_asked(self, row: Instance) -> bool:
        """Whether a failed instance was asked to run again since it failed."""
        if row.restart_requested_at and (
            row.started_at is None or row.restart_requested_at > row.started_at
        ):
            return True
        # One failed before this agent started counts from the row as first seen.
        failed = self.failed_versions.setdefault(row.name, row.updated_at)
        return row.updated_at != failed

    async def _on_exit(self, row: Instance, child: Child) -> None:
        procs.kill_group(child.pgid)  # what it left behind in its group
        self._forget(child)
        logger.info(
            "Instance %s (pid %s) %s.", row.name, child.pid, exit_description(child.exit_code)
        )
        if row.desired_state != DesiredState.RUNNING:
            await self.write(
                row,
                status=InstanceStatus.STOPPED,
                status_reason="",
                pid=None,
                exit_code=child.exit_code,
                assigned_port=None,
            )
            return
        await self._after_exit(row, exit_code=child.exit_code)

    async def _after_exit(self, row: Instance, *, exit_code: int | None) -> None:
        """The restart policy: restart after restart_delay, or fail with the log's end."""
        what = exit_description(exit_code)
        if row.auto_restart and row.restart_count < row.max_restarts:
            count = row.restart_count + 1
            self.restart_due[row.name] = time.monotonic() + row.restart_delay
            await self.write(
                row,
                status=InstanceStatus.RESTARTING,
                status_reason=f"{what}; restart {count} of {row.max_restarts} "
                f"in {row.restart_delay} s",
                restart_count=count,
                exit_code=exit_code,
                pid=None,
                ready_at=None,
                assigned_port=None,
            )
            return
        await self._fail(row, what, exit_code=exit_code)

    async def _fail(self, row: Instance, reason: str, *, exit_code: int | None = None) -> None:
        last = await asyncio.to_thread(logs.tail, self.log_dir, row.name, REASON_LOG_LINES)
        if last and last.strip():
            reason = f"{reason}; the log ends with:\n{last.rstrip()}"
        logger.warning("Instance %s failed: %s", row.name, reason.splitlines()[0])
        await self.write(
            row,
            status=InstanceStatus.FAILED,
            status_reason=reason,
            exit_code=exit_code,
            pid=None,
            ready_at=None,
            assigned_port=None,
        )
        self.failed_versions[row.name] = row.updated_at

    # --- Start and stop ---------------------------------------------------------------

    async def _start(self, row: Instance, *, is_manual: bool) -> None:
        self.failed_versions.pop(row.name, None)
        now = timezone.now()
        # Recorded even when no process comes of it: a failed instance is tried
        # again only when a restart is asked after its last attempt.
        attempt = {"started_at": now, "pid": None, "ready_at": None}
        if is_manual:
            attempt["restart_count"] = 0
        try:
            port, argv = await self._command_line(row)
            popen = launch.spawn(row, argv, self.log_dir)
        except launch.CannotStart as exc:
            await self.write(row, **attempt)
            await self._fail(row, str(exc))
            return
        child = Child(
            name=row.name,
            pid=popen.pid,
            pid_started=procs.start_time(popen.pid),
            pgid=popen.pid,
            port=port,
            started_at=now,
            ready_by=time.monotonic() + row.ready_timeout,
            popen=popen,
        )
        self.children[row.name] = child
        self._save_state()
        logger.info(
            "Started instance %s (pid %s): %s",
            row.name,
            popen.pid,
            shlex.join(backends.masked(argv)),
        )
        await self.write(
            row,
            **{
                **attempt,
                "status": InstanceStatus.STARTING,
                "status_reason": "",
                "pid": child.pid,
                "pid_started": child.pid_started,
                "exit_code": None,
            },
        )

    async def _command_line(self, row: Instance) -> tuple[int, list[str]]:
        """The port and argv to start ``row`` with; CannotStart says why there are none."""
        assign = partial(launch.assign_port, node=self.node, host=self.host, ports=self.ports)
        port = await run_sync(assign, row)
        try:
            return port, backends.command_line(row, host=self.host, port=port)
        except backends.CommandError as exc:
            raise launch.CannotStart(str(exc)) from exc

    async def start(self, row: Instance) -> None:
        """Start ``row`` afresh (the scheduler gave it a slot)."""
        await self._start(row, is_manual=True)

    async def stop(self, row: Instance, *, reason: str) -> None:
        """Stop ``row``'s process, if any, and mark it stopped for ``reason``."""
        child = self.children.get(row.name)
        if child is not None:
            await self._stop(row, child, reason=reason)
        else:
            await self.write(
                row, status=InstanceStatus.STOPPED, status_reason=reason, assigned_port=None
            )

    async def _stop(self, row: Instance, child: Child, *, reason: str = "") -> None:
        await stop_all([child], grace=settings.INSTANCE_STOP_GRACE)
        self._forget(child)
        logger.info(
            "Stopped instance %s (pid %s)%s.", row.name, child.pid, f": {reason}" if reason else ""
        )
        await self.write(
            row,
            status=InstanceStatus.STOPPED,
            status_reason=reason,
            pid=None,
            ready_at=None,
            exit_code=child.exit_code,
            assigned_port=None,
        )

    # --- Slots and the state file -----------------------------------------------------

    def holds_slot(self, name: str) -> bool:
        """Whether ``name`` has a process, or will have one after its restart delay."""
        return name in self.children or name in self.restart_due

    def active_count(self) -> int:
        return len(set(self.children) | set(self.restart_due))

    def _forget(self, child: Child) -> None:
        if self.children.get(child.name) is child:
            del self.children[child.name]
        self._save_state()

    def _save_state(self) -> None:
        write_state(self.state_path, [*self.children.values(), *(self.unclaimed or ())])

    # --- Writing a row -----------------------------------------------------------------

    async def write(self, row: Instance, **fields) -> None:
        """Save the observed ``fields`` that differ from the row (nothing else of it)."""
        changed = {k: v for k, v in fields.items() if getattr(row, k) != v}
        if "pid" in changed and changed["pid"] is None:
            changed["pid_started"] = None
        if not changed:
            return
        changed["updated_at"] = timezone.now()
        self.remember(row, **changed)
        await run_sync(self.update_row, row.pk, changed)
        self._notify()

    def remember(self, row: Instance, **fields) -> None:
        """Set ``fields`` on ``row`` and on the agent's current copy of it."""
        copies = [row]
        current = self.rows.get(row.name)
        if current is not None and current is not row:  # rows compare by pk: "is"
            copies.append(current)
        for copy in copies:
            for name, value in fields.items():
                setattr(copy, name, value)

    def _notify(self) -> None:
        """Wake whoever waits for a row to change (on-demand starts)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def update_row(self, pk: int, fields: dict) -> None:
        Instance.objects.filter(pk=pk).update(**fields)
        # update() sends no signal: tell every process's gateway cache itself.
        bump_generation()
