"""The agent's HTTP API (the protocol is in ``client``'s docstring), on aiohttp.

Every call needs ``Authorization: Bearer <INSTANCE_AGENT_KEY>``; anything else
is 401 before a route is looked at.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
from urllib.parse import urlsplit

from aiohttp import web
from django.conf import settings

from ..models.instances import NAME_RE
from . import logs
from .scheduling import DATABASE_ERRORS

MAX_LOG_LINES = 100_000
MAX_DEMAND_TIMEOUT = 3600


@web.middleware
async def _require_key(request: web.Request, handler):
    expected = f"Bearer {settings.INSTANCE_AGENT_KEY}".encode()
    given = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        return web.json_response(
            {"error": "Send the agent key as 'Authorization: Bearer <INSTANCE_AGENT_KEY>'."},
            status=401,
        )
    return await handler(request)


async def _health(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    return web.json_response(
        {"node": agent.node, "pid": os.getpid(), "instances": dict(agent.statuses)}
    )


async def _reconcile(request: web.Request) -> web.Response:
    request.app["agent"].nudge()
    return web.json_response({"reconciling": True}, status=202)


def _lines(request: web.Request) -> int | None:
    text = request.query.get("lines")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LOG_LINES:
        raise web.HTTPBadRequest(text=f"lines must be a whole number from 1 to {MAX_LOG_LINES}.\n")
    return int(text)


async def _logs(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    lines = _lines(request)
    agent = request.app["agent"]
    text = None
    if NAME_RE.match(name):  # a DNS label: never a path outside the log directory
        text = await asyncio.to_thread(logs.tail, agent.log_dir, name, lines)
    if text is None:
        raise web.HTTPNotFound(text=f"No log for instance '{name}' on this node.\n")
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def _demand_timeout(raw: bytes) -> float:
    """The ``timeout`` of a demand's body (INSTANCE_ON_DEMAND_START_TIMEOUT when absent)."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise ValueError("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ValueError("The body must be a JSON object.")
    unknown = sorted(set(body) - {"timeout"})
    if unknown:
        raise ValueError(f"Unknown field: {unknown[0]}.")
    timeout = body.get("timeout", settings.INSTANCE_ON_DEMAND_START_TIMEOUT)
    is_number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not is_number or not math.isfinite(timeout) or not 0 < timeout <= MAX_DEMAND_TIMEOUT:
        raise ValueError(
            f"timeout must be a number of seconds above 0, at most {MAX_DEMAND_TIMEOUT}."
        )
    return float(timeout)


async def _demand(request: web.Request) -> web.Response:
    """Make an instance run and answer once it does or cannot (``demand``):
    200 {"status": "running", "port"}; 503 {"status", "reason", "retry_after"};
    404 {"reason"} for no such instance on this node; 409 {"reason"} for a stopped
    one that does not start on demand; 400 {"reason"} for a bad body."""
    name = request.match_info["name"]
    try:
        timeout = _demand_timeout(await request.read())
    except ValueError as exc:
        return web.json_response({"reason": str(exc)}, status=400)
    if not NAME_RE.match(name):
        return web.json_response({"reason": f"No instance is named '{name}'."}, status=404)
    try:
        code, body = await request.app["agent"].demands.demand(name, timeout)
    except DATABASE_ERRORS:
        code, body = (
            503,
            {
                "status": "unknown",
                "reason": "The node's agent cannot reach the database.",
                "retry_after": 5,
            },
        )
    headers = {"Retry-After": str(body["retry_after"])} if "retry_after" in body else None
    return web.json_response(body, status=code, headers=headers)


def create_app(agent) -> web.Application:
    app = web.Application(middlewares=[_require_key])
    app["agent"] = agent
    app.router.add_get("/health", _health)
    app.router.add_post("/reconcile", _reconcile)
    app.router.add_get("/instances/{name}/logs", _logs)
    app.router.add_post("/instances/{name}/demand", _demand)
    return app


async def start(agent) -> web.AppRunner:
    """Serve the API on the host and port of settings.INSTANCE_AGENT_URL."""
    address = urlsplit(settings.INSTANCE_AGENT_URL)
    runner = web.AppRunner(create_app(agent), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, address.hostname or "127.0.0.1", address.port or 80)
    await site.start()
    return runner
