"""On-demand starts: a request for an instance that does not run asks its agent to start it.

One demand per instance in this process at a time (single flight): concurrent
requests wait on the same one, at most INSTANCE_START_QUEUE of them per instance;
more get 503 with Retry-After at once. The agent answers once the instance is
ready or cannot be, within INSTANCE_ON_DEMAND_START_TIMEOUT. The instance's new
state is another process's write: once it runs, this process's snapshots are
refreshed at once (not at the next second) before the requests proceed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from django.conf import settings

from panel.errors import AgentUnavailable, ApiError, ModelNotAvailable
from panel.localcache import registry_cache

from ..instances import client
from ..selectors import UpstreamInfo, registry_get

# What a request turned away from a full queue is told: a start takes seconds.
QUEUE_FULL_RETRY_AFTER = 5


@dataclass(slots=True)
class _Flight:
    """A demand in flight for one instance, and the requests waiting on it."""

    task: asyncio.Task
    waiters: int = 0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)


_flights: dict[int, _Flight] = {}


async def instance_start(*, instance_id: int, name: str, node: str) -> None:
    """Make the instance run, sharing a demand already in flight for it.

    Raises ModelNotAvailable (it could not start, with the agent's reason and
    Retry-After) or AgentUnavailable (its agent did not answer).
    """
    flight = _flights.get(instance_id)
    if flight is not None and (flight.task.done() or flight.loop is not asyncio.get_running_loop()):
        flight = None
    if (flight.waiters if flight else 0) >= settings.INSTANCE_START_QUEUE:
        raise ModelNotAvailable(
            f"Too many requests are waiting for instance '{name}' to start; retry shortly.",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)},
        )
    if flight is None:
        task = asyncio.create_task(_demand(name, node))
        task.add_done_callback(_retrieve_exception)
        flight = _flights[instance_id] = _Flight(task)
    flight.waiters += 1
    try:
        # Shielded: a request that leaves does not cancel the start the others wait on.
        failure = await asyncio.shield(flight.task)
    finally:
        flight.waiters -= 1
        if flight.task.done() and _flights.get(instance_id) is flight:
            del _flights[instance_id]
    if failure is not None:
        raise type(failure)(failure.message, param=failure.param, headers=dict(failure.headers))


def waiting(instance_id: int) -> int:
    """Requests of this process waiting for the instance to start."""
    flight = _flights.get(instance_id)
    return flight.waiters if flight is not None else 0


async def _demand(name: str, node: str) -> ApiError | None:
    """One demand to the agent; the error each waiter raises, or None once it runs."""
    timeout = settings.INSTANCE_ON_DEMAND_START_TIMEOUT
    try:
        demand = await client.agent_demand(node, name, timeout)
    except AgentUnavailable as exc:
        return AgentUnavailable(f"Instance '{name}' could not be started: {exc.message}")
    if not demand.is_running:
        retry = {"Retry-After": str(demand.retry_after)} if demand.retry_after is not None else {}
        return ModelNotAvailable(
            f"Instance '{name}' could not be started: {demand.reason}", headers=retry
        )
    await registry_cache.sync_now()
    # Loaded afresh even when the generation was seen already: a load begun before
    # the agent's write could have been kept.
    registry_cache.forget("registry")
    registry_cache.forget(("instance", name))
    return None


def _retrieve_exception(task: asyncio.Task) -> None:
    # Its waiters get its outcome; with none left (they all went) nothing else would.
    if not task.cancelled():
        task.exception()


async def started_upstream(model_id: int, upstream: UpstreamInfo) -> UpstreamInfo:
    """The upstream as the fresh snapshot has it once its instance was started."""
    model = (await registry_get()).by_id.get(model_id)
    fresh = next((u for u in model.upstreams if u.id == upstream.id), None) if model else None
    if fresh is None:
        raise ModelNotAvailable(f"Instance '{upstream.instance_name}' no longer serves this model.")
    if not fresh.is_routable:
        raise ModelNotAvailable(
            f"Instance '{upstream.instance_name}' was started but is {fresh.instance_status} now."
        )
    return fresh


async def shutdown() -> None:
    """Close the agents' client of this loop (ASGI lifespan shutdown)."""
    await client.close_async_client()
