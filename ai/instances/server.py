"""The agent's HTTP API (the protocol is in ``client``'s docstring), on aiohttp.

Every call needs ``Authorization: Bearer <INSTANCE_AGENT_KEY>``; anything else
is 401 before a route is looked at.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from urllib.parse import urlsplit

from aiohttp import web
from django.conf import settings

from ..models.instances import NAME_RE
from . import logs

MAX_LOG_LINES = 100_000


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


def create_app(agent) -> web.Application:
    app = web.Application(middlewares=[_require_key])
    app["agent"] = agent
    app.router.add_get("/health", _health)
    app.router.add_post("/reconcile", _reconcile)
    app.router.add_get("/instances/{name}/logs", _logs)
    return app


async def start(agent) -> web.AppRunner:
    """Serve the API on the host and port of settings.INSTANCE_AGENT_URL."""
    address = urlsplit(settings.INSTANCE_AGENT_URL)
    runner = web.AppRunner(create_app(agent), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, address.hostname or "127.0.0.1", address.port or 80)
    await site.start()
    return runner
