"""On-demand starts (``POST /instances/{name}/demand``): many waiters, one start.

A demand makes an instance run if it may (``on_demand_start``, or already wanted
running) and answers once it is ready or cannot be. Concurrent demands for one
instance share one *flight*: a task that asks the agent's loop to start it (by
writing desired_state running, as a start from the API does) and follows its row
until it is running or failed. Each demand waits for the flight up to its own
timeout; the flight goes on without it (an instance left ``waiting`` starts when
a slot frees). A demand also aborts a drain: a request has come.
"""

from __future__ import annotations

import asyncio
import logging
import math

from django.utils import timezone

from panel.db import run_sync

from ..models import DesiredState, Instance, InstanceStatus
from . import quotas
from .scheduling import busy_window

logger = logging.getLogger("switchboard.instances")

Answer = tuple[int, dict]
QUOTA_RETRY_AFTER = 30
START_RETRY_AFTER = 5


def _refused(status: str, reason: str, retry_after: float) -> Answer:
    return 503, {"status": status, "reason": reason, "retry_after": max(1, math.ceil(retry_after))}


class Demands:
    """The agent's flights, one per instance being demanded."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.flights: dict[str, asyncio.Task] = {}

    async def demand(self, name: str, wait: float) -> Answer:
        """The answer for the demand endpoint: (HTTP status, JSON body)."""
        if name not in self.agent.rows:
            row = await run_sync(self._load, name)
            if row is None:
                return 404, {"reason": f"No instance '{name}' runs on node {self.agent.node}."}
            self.agent.rows.setdefault(name, row)  # created since the agent's last look
        self.agent.scheduler.demanded(name)
        flight = self.flights.get(name)
        if flight is None:
            flight = self.flights[name] = asyncio.create_task(self._fly(name))
            flight.add_done_callback(self._landed)
        try:
            answer = await asyncio.wait_for(asyncio.shield(flight), wait)
        except TimeoutError:
            return self._timed_out(name, wait)
        self.agent.scheduler.demanded(name)
        return answer

    async def cancel(self) -> None:
        """End every flight (the agent stops); their waiters' connections close."""
        flights = list(self.flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    def _load(self, name: str) -> Instance | None:
        rows = Instance.objects.filter(name=name, node=self.agent.node)
        return rows.select_related("organisation").first()

    def _landed(self, flight: asyncio.Task) -> None:
        name = next((n for n, f in self.flights.items() if f is flight), None)
        if name is not None:
            del self.flights[name]
        if not flight.cancelled() and flight.exception() is not None:
            logger.warning("An on-demand start of %s failed: %s", name, flight.exception())

    def _timed_out(self, name: str, timeout: float) -> Answer:
        row = self.agent.rows.get(name)
        status = row.status if row is not None else InstanceStatus.STOPPED
        if status == InstanceStatus.WAITING:
            return _refused(status, row.status_reason, busy_window())
        reason = f"The instance '{name}' is not ready after {timeout:g} s; it is {status}."
        return _refused(status, reason, START_RETRY_AFTER)

    async def _fly(self, name: str) -> Answer:
        """Follow ``name``'s row until it runs or cannot; ask it to run when it should."""
        asked_at = None
        while True:
            changed = self.agent.changed
            row = self.agent.rows.get(name)
            if row is None:
                return 404, {"reason": f"The instance '{name}' was deleted."}
            if self._is_ready(row):
                port = row.assigned_port if row.assigned_port is not None else row.port
                return 200, {"status": "running", "port": port}
            if row.status == InstanceStatus.DRAINING:
                # A request came: it keeps running, unless its stop is decided (then
                # desired_state turns stopped and it is asked to run again below).
                self.agent.scheduler.abort_drain(name)
            elif row.desired_state != DesiredState.RUNNING:
                if not row.on_demand_start:
                    return 409, {
                        "reason": f"The instance '{name}' is stopped and does not start on demand."
                    }
                refusal = await run_sync(self._refusal, row)
                if refusal:
                    return _refused(row.status, refusal, QUOTA_RETRY_AFTER)
                asked_at = await self._ask_to_run(row)
                continue
            elif row.status == InstanceStatus.FAILED:
                if asked_at is None and row.on_demand_start:
                    asked_at = await self._ask_to_run(row)
                    continue
                if asked_at is None or (row.started_at and row.started_at >= asked_at):
                    return _refused(row.status, row.status_reason, max(row.restart_delay, 1))
            await changed.wait()

    def _is_ready(self, row: Instance) -> bool:
        child = self.agent.children.get(row.name)
        return (
            row.status == InstanceStatus.RUNNING
            and row.desired_state == DesiredState.RUNNING
            and child is not None
            and child.is_ready
        )

    @staticmethod
    def _refusal(row: Instance) -> str | None:
        return quotas.refusal(row, is_new_owner=False, is_starting=True)

    async def _ask_to_run(self, row: Instance):
        """Want ``row`` running, as a start from the API would; the time it was asked."""
        now = timezone.now()
        fields = {"desired_state": DesiredState.RUNNING, "restart_count": 0, "updated_at": now}
        if row.status == InstanceStatus.FAILED:
            fields["restart_requested_at"] = now  # a new attempt
        await run_sync(self.agent.update_row, row.pk, fields)
        self.agent.remember(row, **fields)
        logger.info("Instance %s is starting on demand.", row.name)
        self.agent.nudge()
        return now
