"""Scheduling on one node: how many instances run, which one makes room, idle stops.

The agent starts an instance that wants to run only within its node's slots
(Node.max_running_instances, else INSTANCE_MAX_RUNNING; 0: no limit). With none
free it evicts an idle on-demand instance (``victim``); with none idle the
instance waits (status ``waiting``) and starts when a slot frees, before those
that asked after it. An eviction or an idle stop drains first: the instance is
marked ``draining`` (the gateway stops routing to it), the agent waits the busy
window and stops it only if no request came meanwhile (the gateway writes
``last_request_at`` while requests are in flight, ``ai.instances.activity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import Count, Q
from django.utils import timezone

from panel.db import run_sync

from ..models import DesiredState, Instance, InstanceStatus

logger = logging.getLogger("switchboard.instances")

DATABASE_ERRORS = (OperationalError, InterfaceError)
# Statuses that hold one of the node's slots (and count against a reservation).
ACTIVE = (
    InstanceStatus.STARTING,
    InstanceStatus.RUNNING,
    InstanceStatus.RESTARTING,
    InstanceStatus.DRAINING,
)
EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def busy_window() -> float:
    """Seconds a request keeps an instance busy: two activity writes, plus the ~1 s a
    status change takes to reach every gateway."""
    return 2 * settings.INSTANCE_ACTIVITY_INTERVAL + 1.5


def last_used(row: Instance) -> datetime.datetime | None:
    """When a request last used it, or it became ready, whichever is later."""
    return max((t for t in (row.last_request_at, row.ready_at) if t), default=None)


def is_busy(row: Instance, now: datetime.datetime) -> bool:
    since = now - datetime.timedelta(seconds=busy_window())
    return row.last_request_at is not None and row.last_request_at >= since


def is_idle_too_long(row: Instance, now: datetime.datetime) -> bool:
    used = last_used(row)
    if not row.idle_timeout or used is None:
        return False
    return used < now - datetime.timedelta(minutes=row.idle_timeout)


def victim(
    beneficiary: Instance,
    candidates: list[Instance],
    *,
    active_by_org: dict[int, int],
    now: datetime.datetime,
) -> Instance | None:
    """The candidate to stop so that ``beneficiary`` can start, or None.

    An organisation's active instances up to its reserved_instances are never
    stopped for another organisation's. Then instances past INSTANCE_MIN_RESIDENCY
    go before younger ones (anti-thrash), then the lowest link priority, then the
    least recently used.
    """
    settled = now - datetime.timedelta(seconds=settings.INSTANCE_MIN_RESIDENCY)

    def may_go(row: Instance) -> bool:
        org = row.organisation
        if org is None or row.organisation_id == beneficiary.organisation_id:
            return True
        return active_by_org.get(org.pk, 0) > org.reserved_instances

    def order(row: Instance) -> tuple:
        is_young = row.started_at is not None and row.started_at > settled
        return (is_young, row.last_request_priority, last_used(row) or EPOCH, row.name)

    return min(filter(may_go, candidates), key=order, default=None)


def active_by_organisation(org_ids: set[int]) -> dict[int, int]:
    """How many instances each organisation has active on every node, not counting
    those draining (on their way out: one drained for an eviction is not counted twice)."""
    staying = [status for status in ACTIVE if status != InstanceStatus.DRAINING]
    rows = (
        Instance.objects.filter(organisation_id__in=org_ids, status__in=staying)
        .values("organisation_id")
        .annotate(n=Count("id"))
    )
    return {row["organisation_id"]: row["n"] for row in rows}


def commit_stop(pk: int, *, began: datetime.datetime, reason: str) -> bool:
    """Mark a drained instance stopped unless a request used it since ``began``."""
    unused = Q(last_request_at__isnull=True) | Q(last_request_at__lt=began)
    saved = Instance.objects.filter(unused, pk=pk, desired_state=DesiredState.RUNNING).update(
        desired_state=DesiredState.STOPPED, status_reason=reason, updated_at=timezone.now()
    )
    return saved == 1


@dataclass
class Drain:
    """An instance being drained before a stop; a request arriving aborts it."""

    reason: str
    began: datetime.datetime
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the stop is decided: too late to abort.
    is_decided: bool = False
    task: asyncio.Task | None = None


class Scheduler:
    """The agent's slots, evictions, idle stops and drains; the agent owns the processes."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.drains: dict[str, Drain] = {}
        # Each waiting instance that evicted another for its slot: its name -> the victim's.
        self.evictions: dict[str, str] = {}
        self.queued_at: dict[str, float] = {}
        # time.monotonic() of each instance's last demand: it counts as busy after one.
        self.demanded_at: dict[str, float] = {}
        self.next_idle_check = 0.0

    def demanded(self, name: str) -> None:
        """A request wants ``name``: it counts as busy for the busy window."""
        self.demanded_at[name] = time.monotonic()

    # --- Slots ----------------------------------------------------------------------

    def _free_slots(self) -> float:
        limit = self.agent.max_running
        if not limit:
            return math.inf
        # A slot freed by an eviction is kept for the instance that asked for it.
        held = sum(1 for name in self.evictions.values() if not self.agent.holds_slot(name))
        return limit - self.agent.active_count() - held

    async def admit(self, wanting: list[Instance]) -> None:
        """Start the instances that want to run, first come first, within the node's slots."""
        names = {row.name for row in wanting}
        for name in set(self.queued_at) - names:
            del self.queued_at[name]
        for name in set(self.evictions) - names:
            del self.evictions[name]  # it no longer wants to run: its slot is anyone's
        now = time.monotonic()
        for row in wanting:
            self.queued_at.setdefault(row.name, now)
        free = self._free_slots()
        for row in sorted(wanting, key=lambda r: (self.queued_at[r.name], r.name)):
            evicted = self.evictions.pop(row.name, None)
            if evicted is not None and not self.agent.holds_slot(evicted):
                pass  # its victim stopped: that slot is its own
            elif free > 0:
                free -= 1
                if evicted is not None:
                    self.abort_drain(evicted)  # another slot freed first
            else:
                if evicted is not None:
                    self.evictions[row.name] = evicted
                await self._wait_for_slot(row, evicted)
                continue
            await self.agent.start(row)

    async def _wait_for_slot(self, row: Instance, evicted: str | None) -> None:
        if evicted is None:
            evicted = await self._evict_for(row)
        limit, node = self.agent.max_running, self.agent.node
        if evicted is not None:
            reason = f"waiting for {evicted} to stop (node {node} runs at most {limit})"
        else:
            reason = (
                f"node {node} runs its maximum of {limit} instances and none can make room "
                "(each is busy or does not start on demand); it starts when one stops"
            )
        await self.agent.write(row, status=InstanceStatus.WAITING, status_reason=reason)

    def _is_stoppable(self, row: Instance, now: datetime.datetime) -> bool:
        """Running, ready, wanted running, not already draining, and idle."""
        child = self.agent.children.get(row.name)
        demanded = self.demanded_at.get(row.name, -math.inf)
        return (
            child is not None
            and child.is_ready
            and row.status == InstanceStatus.RUNNING
            and row.desired_state == DesiredState.RUNNING
            and row.name not in self.drains
            and not is_busy(row, now)
            and time.monotonic() - demanded >= busy_window()
        )

    async def _evict_for(self, row: Instance) -> str | None:
        now = timezone.now()
        candidates = [
            other
            for other in self.agent.rows.values()
            if other.on_demand_start and self._is_stoppable(other, now)
        ]
        if not candidates:
            return None
        reserving = {
            c.organisation_id
            for c in candidates
            if c.organisation and c.organisation.reserved_instances
        }
        counts = await run_sync(active_by_organisation, reserving) if reserving else {}
        chosen = victim(row, candidates, active_by_org=counts, now=now)
        if chosen is None:
            return None
        self.evictions[row.name] = chosen.name
        self.begin_drain(chosen, f"evicted to start {row.name}")
        return chosen.name

    # --- Idle stops and drains ------------------------------------------------------

    async def stop_idle(self, rows: list[Instance]) -> None:
        """Every INSTANCE_TIMEOUT_CHECK_INTERVAL: drain and stop what was idle too long."""
        if time.monotonic() < self.next_idle_check:
            return
        self.next_idle_check = time.monotonic() + settings.INSTANCE_TIMEOUT_CHECK_INTERVAL
        now = timezone.now()
        for row in rows:
            if is_idle_too_long(row, now) and self._is_stoppable(row, now):
                self.begin_drain(row, f"idle for {row.idle_timeout} min")

    def begin_drain(self, row: Instance, reason: str) -> None:
        logger.info("Draining instance %s: %s.", row.name, reason)
        drain = Drain(reason=reason, began=timezone.now())
        self.drains[row.name] = drain
        drain.task = asyncio.create_task(self._drain(row, drain))

    def abort_drain(self, name: str) -> bool:
        """Keep a draining instance running; False when its stop is already decided."""
        drain = self.drains.get(name)
        if drain is None:
            return True
        if not drain.is_decided:
            drain.abort.set()
        return not drain.is_decided

    async def _drain(self, row: Instance, drain: Drain) -> None:
        try:
            await self.agent.write(
                row, status=InstanceStatus.DRAINING, status_reason=f"draining: {drain.reason}"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.abort.wait(), busy_window())
            drain.is_decided = not drain.abort.is_set()
            if drain.is_decided:
                commit = partial(commit_stop, row.pk, began=drain.began, reason=drain.reason)
                drain.is_decided = await run_sync(commit)
            if drain.is_decided:
                self.agent.remember(row, desired_state=DesiredState.STOPPED)
                await self.agent.stop(row, reason=drain.reason)
            else:
                await self._keep_running(row)
        except DATABASE_ERRORS as exc:
            # The next look finds it draining with its process: running again.
            logger.warning("Draining %s stopped: the database is unreachable (%s).", row.name, exc)
        finally:
            if self.drains.get(row.name) is drain:
                del self.drains[row.name]
            self.agent.nudge()

    async def _keep_running(self, row: Instance) -> None:
        logger.info("Instance %s got a request while draining: it keeps running.", row.name)
        for waiting, evicted in list(self.evictions.items()):
            if evicted == row.name:
                del self.evictions[waiting]  # it looks for another slot
        await self.agent.write(row, status=InstanceStatus.RUNNING, status_reason="")

    async def cancel_drains(self) -> None:
        tasks = [drain.task for drain in self.drains.values() if drain.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
