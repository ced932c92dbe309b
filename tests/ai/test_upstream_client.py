"""The pooled upstream client (ai.gateway.upstream): what it keeps between requests."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiohttp import web

from ai.gateway import upstream
from ai.models import ApiStyle


def test_a_cookie_an_upstream_sets_never_rides_on_the_next_callers_request():
    # One client session serves every tenant's requests: a cookie jar would send an
    # upstream's Set-Cookie from one caller's reply on with the next caller's request.
    async def scenario() -> list[str | None]:
        seen: list[str | None] = []

        async def handler(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Cookie"))
            response = web.json_response({"ok": True})
            response.set_cookie("session", "alice-secret", path="/")
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        target = SimpleNamespace(
            api_style=ApiStyle.OPENAI,
            api_key="sk-up",
            base_url=f"http://localhost:{port}/v1",  # a jar takes no cookie from an IP
            total_timeout=5.0,
            connect_timeout=5.0,
            first_byte_timeout=5.0,
        )
        try:
            for request_id in ("req_1", "req_2"):
                response = await upstream.send(
                    target, "chat/completions", b"{}", request_id=request_id
                )
                async with response:
                    assert response.status == 200
                    assert "alice-secret" in response.headers["Set-Cookie"]
        finally:
            await upstream.close_session()
            await runner.cleanup()
        return seen

    assert asyncio.run(scenario()) == [None, None]
