"""The instance agent: the one process of a node that starts, watches and stops its
model servers (``manage.py instance_agent``).

Every INSTANCE_POLL_INTERVAL seconds, or at once when nudged (POST /reconcile),
it loads its node's Instance rows and brings reality in line with each: starts
what should run, polls readiness, restarts what crashed (auto_restart,
max_restarts, restart_delay), stops what should not run or was deleted, and
rotates logs. It writes only the observed fields of a row, and only when they
change. Children run in sessions of their own and write their logs themselves,
so they outlive the agent; the next agent re-adopts them (``children``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import os
import shlex
import signal
import time
from functools import partial
from pathlib import Path

import httpx
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections
from django.utils import timezone

from panel.db import run_sync
from panel.localcache import bump_generation

from ..models import DesiredState, Instance, InstanceStatus
from . import backends, launch, logs, procs, server
from .children import (
    Child,
    exit_description,
    read_state,
    sort_previous,
    stop_all,
    write_state,
)

logger = logging.getLogger("switchboard.instances")

DATABASE_ERRORS = (OperationalError, InterfaceError)
REASON_LOG_LINES = 20
ACTIVE = (InstanceStatus.STARTING, InstanceStatus.RUNNING, InstanceStatus.RESTARTING)


class Agent:
    """Reconciles the Instance rows of settings.INSTANCE_NODE with its child processes."""

    def __init__(self, *, keep_children: bool = False) -> None:
        self.keep_children = keep_children
        self.node = settings.INSTANCE_NODE
        self.host = settings.INSTANCE_HOST
        self.log_dir = Path(settings.INSTANCE_LOG_DIR)
        self.state_path = self.log_dir / f"agent-{self.node}.json"
        self.ports = procs.parse_port_range(settings.INSTANCE_PORT_RANGE)
        self.children: dict[str, Child] = {}
        # Processes a previous agent left, until the database says which to re-adopt.
        self.unclaimed: list[Child] | None = None
        self.restart_due: dict[str, float] = {}
        # The updated_at of each row this agent marked failed: a later one means a
        # service wrote it since (a start, an edit), which asks for a new attempt.
        self.failed_versions: dict[str, datetime.datetime] = {}
        self.statuses: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.is_stopping = False
        self.database_is_down = False
        # Probes go to this host's servers, never through a proxy from the environment.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(1.0, connect=0.5), trust_env=False)

    # --- The loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until SIGTERM or SIGINT, then stop the children (unless kept)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_soon)
        self.unclaimed = read_state(self.state_path)
        try:
            while not self.is_stopping:
                await self.reconcile()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), settings.INSTANCE_POLL_INTERVAL)
                self.wake.clear()
        finally:
            await self.shutdown()
            await self.http.aclose()

    def stop_soon(self) -> None:
        self.is_stopping = True
        self.wake.set()

    def nudge(self) -> None:
        self.wake.set()

    async def reconcile(self) -> None:
        """One look at the database and the children; a database away is retried later."""
        self._reap_and_rotate()
        try:
            rows = await run_sync(self._load_rows)
            if self.unclaimed is not None:
                await self._claim_previous_children(rows)
            await self._probe_readiness(rows)
            for row in rows:
                await self._reconcile_row(row)
            await self._stop_deleted({row.name for row in rows})
            self.statuses = {row.name: row.status for row in rows}
            await run_sync(close_old_connections)
        except DATABASE_ERRORS as exc:
            if not self.database_is_down:
                logger.warning(
                    "The database is unreachable (%s); instances keep running, retrying.", exc
                )
            self.database_is_down = True
            return
        if self.database_is_down:
            logger.info("The database is back.")
            self.database_is_down = False

    def _reap_and_rotate(self) -> None:
        for child in self.children.values():
            child.exited()  # reaps an own child that exited, even while the database is away
        names = set(self.children) | {path.stem for path in self.log_dir.glob("*.log")}
        for name in names:
            logs.rotate_if_big(
                self.log_dir,
                name,
                max_bytes=settings.INSTANCE_LOG_MAX_BYTES,
                backups=settings.INSTANCE_LOG_BACKUPS,
            )

    def _load_rows(self) -> list[Instance]:
        return list(Instance.objects.filter(node=self.node).order_by("name"))

    # --- One row ----------------------------------------------------------------------

    async def _reconcile_row(self, row: Instance) -> None:
        child = self.children.get(row.name)
        if child is not None and child.exited():
            await self._on_exit(row, child)
            return
        if row.desired_state != DesiredState.RUNNING:
            self.restart_due.pop(row.name, None)
            if child is not None:
                await self._stop(row, child)
            elif row.status != InstanceStatus.STOPPED:
                await self._write(row, status=InstanceStatus.STOPPED, status_reason="", pid=None)
            return
        if child is not None:
            await self._watch(row, child)
        else:
            await self._start_if_due(row)

    async def _watch(self, row: Instance, child: Child) -> None:
        if row.restart_requested_at and row.restart_requested_at > child.started_at:
            await self._stop(row, child)
            await self._start(row, is_manual=True)
        elif child.is_ready:
            await self._write(row, status=InstanceStatus.RUNNING, **child.row_fields())
        elif time.monotonic() <= child.ready_by:
            await self._write(row, status=InstanceStatus.STARTING, **child.row_fields())
        else:
            await stop_all([child], grace=0)
            self._forget(child)
            await self._fail(
                row, f"not ready within {row.ready_timeout} s", exit_code=child.exit_code
            )

    async def _start_if_due(self, row: Instance) -> None:
        due = self.restart_due.get(row.name)
        if due is not None:
            if time.monotonic() >= due:
                del self.restart_due[row.name]
                await self._start(row, is_manual=False)
        elif row.status == InstanceStatus.RESTARTING:
            await self._start(row, is_manual=False)  # its delay ran out under a previous agent
        elif row.status in (InstanceStatus.STARTING, InstanceStatus.RUNNING):
            # Its process is gone and was not re-adopted: it exited while no agent watched.
            await self._after_exit(row, exit_code=None)
        elif row.status == InstanceStatus.STOPPED or self._is_retry_asked(row):
            await self._start(row, is_manual=True)

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
            await self._write(
                row,
                status=InstanceStatus.STOPPED,
                status_reason="",
                pid=None,
                exit_code=child.exit_code,
            )
            return
        await self._after_exit(row, exit_code=child.exit_code)

    async def _after_exit(self, row: Instance, *, exit_code: int | None) -> None:
        """The restart policy: restart after restart_delay, or fail with the log's end."""
        what = exit_description(exit_code)
        if row.auto_restart and row.restart_count < row.max_restarts:
            count = row.restart_count + 1
            self.restart_due[row.name] = time.monotonic() + row.restart_delay
            await self._write(
                row,
                status=InstanceStatus.RESTARTING,
                status_reason=f"{what}; restart {count} of {row.max_restarts} "
                f"in {row.restart_delay} s",
                restart_count=count,
                exit_code=exit_code,
                pid=None,
                ready_at=None,
            )
            return
        await self._fail(row, what, exit_code=exit_code)

    async def _fail(self, row: Instance, reason: str, *, exit_code: int | None = None) -> None:
        last = await asyncio.to_thread(logs.tail, self.log_dir, row.name, REASON_LOG_LINES)
        if last and last.strip():
            reason = f"{reason}; the log ends with:\n{last.rstrip()}"
        logger.warning("Instance %s failed: %s", row.name, reason.splitlines()[0])
        await self._write(
            row,
            status=InstanceStatus.FAILED,
            status_reason=reason,
            exit_code=exit_code,
            pid=None,
            ready_at=None,
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
            await self._write(row, **attempt)
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
        await self._write(
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
        port = row.port
        if port is None:
            claim = partial(launch.claim_port, node=self.node, host=self.host, ports=self.ports)
            port = await run_sync(claim, row)
            if port is None:
                raise launch.CannotStart(
                    f"no free port in {settings.INSTANCE_PORT_RANGE} on {self.host}"
                )
        elif not procs.port_is_free(self.host, port):
            raise launch.CannotStart(f"port {port} on {self.host} is in use by another program")
        try:
            return port, backends.command_line(row, host=self.host, port=port)
        except backends.CommandError as exc:
            raise launch.CannotStart(str(exc)) from exc

    async def _stop(self, row: Instance, child: Child) -> None:
        await stop_all([child], grace=settings.INSTANCE_STOP_GRACE)
        self._forget(child)
        logger.info("Stopped instance %s (pid %s).", row.name, child.pid)
        await self._write(
            row,
            status=InstanceStatus.STOPPED,
            status_reason="",
            pid=None,
            ready_at=None,
            exit_code=child.exit_code,
        )

    async def _stop_deleted(self, names: set[str]) -> None:
        gone = [child for name, child in self.children.items() if name not in names]
        if gone:
            await stop_all(gone, grace=settings.INSTANCE_STOP_GRACE)
            for child in gone:
                logger.info("Stopped instance %s (pid %s): deleted.", child.name, child.pid)
                self._forget(child)
        for name in set(self.restart_due) - names:
            del self.restart_due[name]
        for name in set(self.failed_versions) - names:
            del self.failed_versions[name]

    def _forget(self, child: Child) -> None:
        if self.children.get(child.name) is child:
            del self.children[child.name]
        self._save_state()

    def _save_state(self) -> None:
        write_state(self.state_path, [*self.children.values(), *(self.unclaimed or ())])

    # --- Readiness ----------------------------------------------------------------------

    async def _probe_readiness(self, rows: list[Instance]) -> None:
        by_name = {row.name: row for row in rows}
        waiting = [
            (child, by_name[name])
            for name, child in self.children.items()
            if not child.is_ready and name in by_name
        ]
        results = await asyncio.gather(*(self._is_ready(c, r) for c, r in waiting))
        for (child, row), is_ready in zip(waiting, results, strict=True):
            if is_ready and not child.exited():
                child.is_ready = True
                await self._write(row, status=InstanceStatus.RUNNING, ready_at=timezone.now())
                logger.info("Instance %s is ready on port %s.", row.name, child.port)

    async def _is_ready(self, child: Child, row: Instance) -> bool:
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{child.port}{backends.readiness_path(row)}"
        try:
            reply = await self.http.get(url)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    # --- Re-adoption and shutdown -------------------------------------------------------

    async def _claim_previous_children(self, rows: list[Instance]) -> None:
        """Re-adopt a previous agent's live children that should run; kill the others."""
        adopted, strays = sort_previous(self.unclaimed or [], rows, owned=set(self.children))
        for child in adopted:
            self.children[child.name] = child
            logger.info("Re-adopted instance %s (pid %s).", child.name, child.pid)
        self.unclaimed = None
        if strays:
            await stop_all(strays, grace=settings.INSTANCE_STOP_GRACE)
            for child in strays:
                logger.info(
                    "Stopped a previous agent's process of %s (pid %s).", child.name, child.pid
                )
        self._save_state()

    async def shutdown(self) -> None:
        """Stop every child and mark its row stopped; with --keep-children, leave them."""
        if self.keep_children:
            self._save_state()
            logger.info("Agent stopping; %d instance(s) left running.", len(self.children))
            return
        everyone = [*self.children.values(), *(self.unclaimed or ())]
        await stop_all(everyone, grace=settings.INSTANCE_STOP_GRACE)
        self.children.clear()
        self.unclaimed = []
        self._save_state()
        try:
            await run_sync(self._mark_stopped)
        except DATABASE_ERRORS as exc:
            logger.warning("Could not mark the instances stopped (%s).", exc)
        logger.info("Agent stopped; %d instance(s) stopped.", len(everyone))

    def _mark_stopped(self) -> None:
        Instance.objects.filter(node=self.node, status__in=ACTIVE).update(
            status=InstanceStatus.STOPPED,
            status_reason="agent stopped",
            pid=None,
            pid_started=None,
            ready_at=None,
            updated_at=timezone.now(),
        )
        bump_generation()

    # --- Writing a row -----------------------------------------------------------------

    async def _write(self, row: Instance, **fields) -> None:
        """Save the observed ``fields`` that differ from the row (nothing else of it)."""
        changed = {k: v for k, v in fields.items() if getattr(row, k) != v}
        if "pid" in changed and changed["pid"] is None:
            changed["pid_started"] = None
        if not changed:
            return
        changed["updated_at"] = timezone.now()
        for name, value in changed.items():
            setattr(row, name, value)
        await run_sync(self._update, row.pk, changed)

    def _update(self, pk: int, fields: dict) -> None:
        Instance.objects.filter(pk=pk).update(**fields)
        # update() sends no signal: tell every process's gateway cache itself.
        bump_generation()


class AgentError(Exception):
    """The agent cannot run: its port is taken, or another agent owns the node."""


def _lock_node(log_dir: Path, node: str):
    """An exclusive lock on the node's log directory, held while the process lives."""
    # Servers' logs may hold what they print of their secrets: the agent's user only.
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(log_dir / f"agent-{node}.lock", "a")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise AgentError(
            f"Another instance agent runs for node '{node}' (it holds {lock.name})."
        ) from None
    return lock


async def run_agent(*, keep_children: bool = False) -> None:
    """The agent with its HTTP API, until SIGTERM or SIGINT."""
    # A readiness probe every poll is not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = Agent(keep_children=keep_children)
    with _lock_node(agent.log_dir, agent.node):
        try:
            runner = await server.start(agent)
        except OSError as exc:
            raise AgentError(
                f"The instance agent cannot listen on {settings.INSTANCE_AGENT_URL}: "
                f"{exc.strerror or exc}."
            ) from exc
        logger.info(
            "Instance agent of node %s on %s (pid %s).",
            agent.node,
            settings.INSTANCE_AGENT_URL,
            os.getpid(),
        )
        try:
            await agent.run()
        finally:
            await runner.cleanup()
