"""The instance agent: the one process of a node that starts, watches and stops its
model servers (``manage.py instance_agent``).

Every INSTANCE_POLL_INTERVAL seconds, or at once when nudged (POST /reconcile),
it loads its node's Instance rows and brings reality in line with each: starts
what should run (within the node's slots, ``scheduling``), polls readiness,
restarts what crashed (auto_restart, max_restarts, restart_delay), stops what
should not run, was deleted or was idle too long, and rotates logs. On-demand
starts (POST /instances/{name}/demand) wait in ``demand``; the processes
themselves are ``lifecycle``'s. It writes only the observed fields of a row, and
only when they change. Children run in sessions of their own and write their logs themselves,
so they outlive the agent; the next agent re-adopts them (``children``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from panel.db import run_sync
from panel.localcache import bump_generation

from ..models import DesiredState, Instance, InstanceStatus, Node
from . import backends, logs, procs, server
from .children import Child, read_state, sort_previous, stop_all
from .demand import Demands
from .lifecycle import ProcessKeeper
from .scheduling import ACTIVE, DATABASE_ERRORS, Scheduler

logger = logging.getLogger("switchboard.instances")


class Agent(ProcessKeeper):
    """Reconciles the Instance rows of settings.INSTANCE_NODE with its child processes."""

    def __init__(self, *, keep_children: bool = False) -> None:
        super().__init__()
        self.keep_children = keep_children
        # The node's limits: its Node row's, else the settings'.
        self.max_running = settings.INSTANCE_MAX_RUNNING
        self.port_range = settings.INSTANCE_PORT_RANGE
        self.statuses: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.scheduler = Scheduler(self)
        self.demands = Demands(self)
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
            rows, node = await run_sync(self._load_rows)
            self._apply_node(node)
            self.rows = {row.name: row for row in rows}
            if self.unclaimed is not None:
                await self._claim_previous_children(rows)
            await self._probe_readiness(rows)
            wanting = [row for row in rows if await self._reconcile_row(row)]
            await self.scheduler.admit(wanting)
            await self.scheduler.stop_idle(rows)
            await self._stop_deleted({row.name for row in rows})
            self.statuses = {row.name: row.status for row in rows}
            self._notify()
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

    def _load_rows(self) -> tuple[list[Instance], dict | None]:
        rows = Instance.objects.filter(node=self.node).select_related("organisation")
        node = Node.objects.filter(name=self.node).values("max_running_instances", "port_range")
        return list(rows.order_by("name")), node.first()

    def _apply_node(self, node: dict | None) -> None:
        node = node or {}
        limit = node.get("max_running_instances")
        self.max_running = settings.INSTANCE_MAX_RUNNING if limit is None else limit
        text = node.get("port_range") or settings.INSTANCE_PORT_RANGE
        if text != self.port_range:
            try:
                self.ports = procs.parse_port_range(text)
            except ValueError:
                logger.warning("Node %s: port range %r is not first-last.", self.node, text)
            self.port_range = text

    # --- One row ----------------------------------------------------------------------

    async def _reconcile_row(self, row: Instance) -> bool:
        """Act on one row; True when it wants to start (``scheduler.admit`` decides)."""
        child = self.children.get(row.name)
        if row.name in self.scheduler.drains:
            return False  # its drain decides
        if child is not None and child.exited():
            await self._on_exit(row, child)
        elif row.desired_state != DesiredState.RUNNING:
            self.restart_due.pop(row.name, None)
            if child is not None:
                await self._stop(row, child)
            elif row.status != InstanceStatus.STOPPED:
                await self.write(
                    row,
                    status=InstanceStatus.STOPPED,
                    status_reason="",
                    pid=None,
                    assigned_port=None,
                )
        elif child is not None:
            await self._watch(row, child)
        else:
            return await self._start_if_due(row)
        return False

    async def _watch(self, row: Instance, child: Child) -> None:
        if row.restart_requested_at and row.restart_requested_at > child.started_at:
            await self._stop(row, child)
            await self._start(row, is_manual=True)
        elif child.is_ready:
            await self.write(row, status=InstanceStatus.RUNNING, **child.row_fields())
        elif time.monotonic() <= child.ready_by:
            await self.write(row, status=InstanceStatus.STARTING, **child.row_fields())
        else:
            await stop_all([child], grace=0)
            self._forget(child)
            await self._fail(
                row, f"not ready within {row.ready_timeout} s", exit_code=child.exit_code
            )

    async def _start_if_due(self, row: Instance) -> bool:
        """Restart what holds a slot; True for a fresh start, which needs one."""
        due = self.restart_due.get(row.name)
        if due is not None:
            if time.monotonic() >= due:
                del self.restart_due[row.name]
                await self._start(row, is_manual=False)
        elif row.status == InstanceStatus.RESTARTING:
            await self._start(row, is_manual=False)  # its delay ran out under a previous agent
        elif row.status in (
            InstanceStatus.STARTING,
            InstanceStatus.RUNNING,
            InstanceStatus.DRAINING,
        ):
            # Its process is gone and was not re-adopted: it exited while no agent watched.
            await self._after_exit(row, exit_code=None)
        else:
            fresh = (InstanceStatus.STOPPED, InstanceStatus.WAITING)
            return row.status in fresh or self._is_retry_asked(row)
        return False

    async def _stop_deleted(self, names: set[str]) -> None:
        names = names | set(self.scheduler.drains)  # a drain finds its row gone itself
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
                await self.write(row, status=InstanceStatus.RUNNING, ready_at=timezone.now())
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
        await self.demands.cancel()
        await self.scheduler.cancel_drains()  # the next agent finds them draining: running
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
        Instance.objects.filter(
            node=self.node, status__in=(*ACTIVE, InstanceStatus.WAITING)
        ).update(
            status=InstanceStatus.STOPPED,
            status_reason="agent stopped",
            pid=None,
            pid_started=None,
            ready_at=None,
            assigned_port=None,
            updated_at=timezone.now(),
        )
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
