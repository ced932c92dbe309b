"""How web processes, Celery and the admin talk to a node's instance agent.

The agent (``ai.instances.agent``) serves a small HTTP API on its node, every
call with ``Authorization: Bearer <INSTANCE_AGENT_KEY>``:

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
from dataclasses import dataclass

import httpx
from django.conf import settings

from panel.errors import AgentUnavailable

TIMEOUT = httpx.Timeout(3.0, connect=1.0)
# A demand is answered within its own timeout; this much more for the answer to arrive.
DEMAND_MARGIN = 5.0


def agent_endpoint(node: str) -> tuple[str, str]:
    """The base URL and bearer key of ``node``'s agent (sync: a database read).

    Only this host's node is known until Node rows are read (issue 14).
    """
    if node != settings.INSTANCE_NODE:
        raise AgentUnavailable(f"No agent is known for node '{node}'.")
    return settings.INSTANCE_AGENT_URL.rstrip("/"), settings.INSTANCE_AGENT_KEY


async def agent_endpoint_async(node: str) -> tuple[str, str]:
    """``agent_endpoint`` for the request path (cached; no thread hop when warm)."""
    return agent_endpoint(node)


def agent_url(node: str) -> str:
    """The base URL of ``node``'s agent."""
    return agent_endpoint(node)[0]


def instance_address(node: str) -> str:
    """The host at which ``node``'s instances answer."""
    return settings.INSTANCE_HOST


def instance_base_url(instance) -> str | None:
    """The OpenAI base URL of ``instance`` (its node's address and its port); None
    while it has no port (one is chosen at its first start)."""
    port = instance.assigned_port if instance.assigned_port is not None else instance.port
    if port is None:
        return None
    host = instance_address(instance.node)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}/v1"


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.INSTANCE_AGENT_KEY}"}


def _unavailable(node: str, exc: Exception | None = None) -> AgentUnavailable:
    reason = f" ({type(exc).__name__})" if exc else ""
    return AgentUnavailable(
        f"The instance agent of node '{node}' is not answering{reason}; is "
        "`manage.py instance_agent` running there?"
    )


def agent_nudge(node: str) -> bool:
    """Ask ``node``'s agent to reconcile now; False when it did not answer."""
    try:
        reply = httpx.post(f"{agent_url(node)}/reconcile", headers=_headers(), timeout=TIMEOUT)
    except (httpx.HTTPError, AgentUnavailable):
        return False
    return reply.status_code == 202


def agent_health(node: str) -> dict:
    """What ``node``'s agent reports of itself; raises AgentUnavailable."""
    try:
        reply = httpx.get(f"{agent_url(node)}/health", headers=_headers(), timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise _unavailable(node, exc) from exc
    if reply.status_code != 200:
        raise _unavailable(node)
    return reply.json()


def agent_logs(node: str, name: str, lines: int | None = None) -> str:
    """The last ``lines`` lines of an instance's log (all when None)."""
    params = {} if lines is None else {"lines": str(lines)}
    try:
        reply = httpx.get(
            f"{agent_url(node)}/instances/{name}/logs",
            params=params,
            headers=_headers(),
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise _unavailable(node, exc) from exc
    if reply.status_code == 404:
        return ""  # never started on this node: no log yet
    if reply.status_code != 200:
        raise _unavailable(node)
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
    except httpx.HTTPError as exc:
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
    if reply.status_code == 401:
        raise AgentUnavailable(f"The instance agent of node '{node}' refused Switchboard's key.")
    raise _unavailable(node)


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
