"""Issue 20's measuring stick: the least a Python relay does for a chat completion.

``python tests/bench/relay.py --port P --upstream http://127.0.0.1:U/v1 --key K`` serves
``POST /v1/chat/completions`` with aiohttp.web on uvloop (as the gateway runs): it parses
the JSON body, checks the bearer against the one key, re-serialises the body, POSTs it to
the upstream over one pooled session and relays the reply, a stream's chunks written as
they arrive. No framework, no database, no accounting: `run.py` prints the gateway's
numbers against this one's.
"""

from __future__ import annotations

import argparse
import json

import aiohttp
import uvloop
from aiohttp import web

UNAUTHORIZED = {
    "error": {
        "message": "Invalid API key.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
}
BAD_BODY = {
    "error": {
        "message": "The body is not a JSON object.",
        "type": "invalid_request_error",
        "code": "invalid_json",
    }
}


def create_app(upstream: str, key: str) -> web.Application:
    """The relay's one route, with its pooled client session opened and closed with the app."""
    app = web.Application()
    bearer = f"Bearer {key}"
    url = f"{upstream.rstrip('/')}/chat/completions"
    headers = {"Content-Type": "application/json"}

    async def session(app: web.Application):
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        app["session"] = aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent",)
        )
        yield
        await app["session"].close()

    async def completions(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != bearer:
            return web.json_response(UNAUTHORIZED, status=401)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response(BAD_BODY, status=400)
        if not isinstance(body, dict):
            return web.json_response(BAD_BODY, status=400)
        data = json.dumps(body).encode()
        async with app["session"].post(url, data=data, headers=headers) as reply:
            if not body.get("stream"):
                return web.Response(
                    body=await reply.read(),
                    status=reply.status,
                    content_type=reply.content_type,
                )
            response = web.StreamResponse(
                status=reply.status, headers={"Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            async for chunk in reply.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, up to /v1")
    parser.add_argument("--key", required=True, help="the one bearer key it accepts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = create_app(args.upstream, args.key)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
        shutdown_timeout=0.5,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
