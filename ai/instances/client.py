"""How web processes, Celery and the admin talk to a node's instance agent.

Each node's agent (``ai.instances.agent``) is found through its Node row
(``ai.instances.nodes``): its address, its key (the agent's INSTANCE_AGENT_KEY)
and the host its instances answer at. It serves a small HTTP API, every call
with ``Authorization: Bearer <key>``:

- ``GET /health``: ``{"node", "pid", "instances": {name: status}}``
- ``POST /reconcile``: look at the database now instead of at the next poll (202)
- ``GET /instances/{name}/logs?lines=N``: the last N lines of the log (text; all
  without ``lines``), 404 when the instance has no log on this node (never started)
- ``POST /instances/{name}/demand`` ``{"timeout": seconds}``: make it run if it may,
  answered once it is ready (200 ``{"status": "running", "port"}``) or cannot be (503
  ``{"status", "reason", "retry_after"}``; 404 or 409 ``{"reason"}``); the gateway's
  on-demand start (``agent_demand``)

Desired state lives in the database, so a nudge that fails loses nothing: the
agent applies it at its next poll once it is back. Calls that need an answer
(logs) raise ``AgentUnavailable`` when the agent does not give one.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from panel.errors import AgentUnavailable
from panel.localcache import registry_cache

from . import nodes

TIMEOUT = httpx.Timeout(3.0, connect=1.0)
# A demand is answered within its own timeout; this much more for the answer to arrive.
DEMAND_MARGIN = 5.0
# No answer: down, refused, timed out, or an address httpx cannot use.
UNANSWERED = (httpx.HTTPError, httpx.InvalidURL)


def _unknown(node: str) -> AgentUnavailable:
    return AgentUnavailable(
        f"No node is named '{node}': add it in the admin (Nodes) with its agent's address and key."
    )


def agent_endpoint(node: str) -> tuple[str, str]:
    """The base URL and bearer key of ``node``'s agent (sync: a database read).

    This host's node gets its row from the settings when it has none yet.
    """
    endpoint = nodes.node_endpoint(node, create_local=True)
    if endpoint is None:
        raise _unknown(node)
    return endpoint.address, endpoint.api_key


async def agent_endpoint_async(node: str) -> tuple[str, str]:
    """``agent_endpoint`` for the request path: cached per process (no thread hop when
    warm) until a Node row changes. It never writes: a missing local row is answered
    from the settings it would be made from."""
    endpoint = await registry_cache.get(("node", node), nodes.node_endpoint, node)
    if endpoint is None:
        raise _unknown(node)
    return endpoint.address, endpoint.api_key


def agent_url(node: str) -> str:
    """The base URL of ``node``'s agent."""
    return agent_endpoint(node)[0]


def instance_address(node: str) -> str | None:
    """The host at which ``node``'s instances answer; None for a node with no row."""
    endpoint = nodes.node_endpoint(node)
    return endpoint.instance_host if endpoint else None


def instance_origin(instance, hosts: Mapping[str, str] | None = None) -> str | None:
    """``http://host:port`` of ``instance`` (its node's host and its port); None while it
    has no port (one is chosen at its first start) or its node is unknown. ``hosts``
    (``nodes.instance_hosts()``) saves a query per instance when there are many."""
    port = instance.assigned_port if instance.assigned_port is not None else instance.port
    if port is None:
        return None
    host = instance_address(instance.node) if hosts is None else hosts.get(instance.node)
    if host is None:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}"


def instance_base_url(instance, hosts: Mapping[str, str] | None = None) -> str | None:
    """The OpenAI base URL of ``instance``; None as for ``instance_origin``."""
    origin = instance_origin(instance, hosts)
    return None if origin is None else f"{origin}/v1"


def _unavailable(node: str, exc: Exception | None = None) -> AgentUnavailable:
    reason = f" ({type(exc).__name__})" if exc else ""
    return AgentUnavailable(
        f"The instance agent of node '{node}' is not answering{reason}; is "
        "`manage.py instance_agent` running there?"
    )


def _refused(node: str, reply: httpx.Response) -> AgentUnavailable:
    if reply.status_code == 401:
        return AgentUnavailable(
            f"The instance agent of node '{node}' refused the node's key: set the node's key "
            "to that agent's INSTANCE_AGENT_KEY."
        )
    return _unavailable(node)


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def agent_nudge(node: str) -> bool:
    """Ask ``node``'s agent to reconcile now; False when it did not answer."""
    try:
        url, key = agent_endpoint(node)
        reply = httpx.post(f"{url}/reconcile", headers=_headers(key), timeout=TIMEOUT)
    except (*UNANSWERED, AgentUnavailable):
        return False
    return reply.status_code == 202


def agent_health(node: str) -> dict:
    """What ``node``'s agent reports of itself; raises AgentUnavailable."""
    url, key = agent_endpoint(node)
    try:
        reply = httpx.get(f"{url}/health", headers=_headers(key), timeout=TIMEOUT)
    except UNANSWERED as exc:
        raise _unavailable(node, exc) from exc
    if reply.status_code != 200:
        raise _refused(node, reply)
    return reply.json()


def agent_logs(node: str, name: str, lines: int | None = None) -> str:
    """The last ``lines`` lines of an instance's log (all when None)."""
    url, key = agent_endpoint(node)
    params = {} if lines is None else {"lines": str(lines)}
    try:
        reply = httpx.get(
            f"{url}/instances/{name}/logs",
            params=params,
            headers=_headers(key),
            timeout=TIMEOUT,
        )
    except UNANSWERED as exc:
        raise _unavailable(node, exc) from exc
    if reply.status_code == 404:
        return ""  # never started on this node: no log yet
    if reply.status_code != 200:
        raise _refused(node, reply)
    return reply.text


@dataclass(frozen=True, slots=True)
class Demand:
    """An agent's answer to a demand: running on ``port``, or why not."""

    is_running: bool
    status: str = ""
    port: int | None = None
    reason: str = ""
    retry_after: int | None = None  # seconds, when the agent said


_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _async_client() -> httpx.AsyncClient:
    """The shared client of the running event loop (one pool for every demand)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None or client.is_closed:
        client = _async_clients[loop] = httpx.AsyncClient()
    return client


async def close_async_client() -> None:
    """Close the running loop's client (at server shutdown)."""
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


async def agent_demand(node: str, name: str, within: float) -> Demand:
    """Ask ``node``'s agent to make the instance ``name`` run, waiting up to ``within``
    seconds for it to be ready; raises AgentUnavailable when the agent does not answer."""
    url, key = await agent_endpoint_async(node)
    try:
        reply = await _async_client().post(
            f"{url}/instances/{name}/demand",
            json={"timeout": within},
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(within + DEMAND_MARGIN, connect=TIMEOUT.connect),
        )
    except httpx.ReadTimeout:
        return Demand(is_running=False, status="timeout", reason=f"not ready within {within:g} s")
    except UNANSWERED as exc:
        raise _unavailable(node, exc) from exc
    body = _json_object(reply)
    if reply.status_code == 200:
        return Demand(is_running=True, status="running", port=_whole(body.get("port")))
    if reply.status_code in (400, 404, 409, 503):
        reason = body.get("reason")
        return Demand(
            is_running=False,
            status=str(body.get("status") or ""),
            reason=reason if isinstance(reason, str) and reason else f"HTTP {reply.status_code}",
            retry_after=_whole(body.get("retry_after")),
        )
    raise _refused(node, reply)


def _json_object(reply: httpx.Response) -> dict:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _whole(value) -> int | None:
    """A whole number of the agent's answer, or None (wrong type, negative)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)
