"""An ASGI handler for the gateway's routes, without Django's per-request thread hops.

Measured with wrk against the fake upstream (tests/bench): through Django's
stock ASGIHandler and middleware a proxied request cost ~4.4 ms at c=1 and
the gateway topped out near 200 req/s, with the CPU mostly idle. Each
MiddlewareMixin middleware runs process_request/process_response through
sync_to_async (two thread hops each), ThreadSensitiveContext starts a thread
per request, and request_started and response.close() hop once more.

The gateway's views need none of that: they authenticate themselves (API key,
or a session loaded on demand), render their own errors and touch the
database only on cache misses. So views marked ``fast_path = True`` (see
``ai.api.base.ai_route``) are served by this handler: no middleware, no
request signals, no thread-sensitive context. Everything else goes through
Django's normal handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import lru_cache

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import Resolver404, get_resolver, set_script_prefix


@lru_cache(maxsize=4096)
def _fast_match(path: str):
    """The cached URL match of a fast-path view, or None (resolved once per distinct path)."""
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return None
    return match if getattr(match.func, "fast_path", False) else None


def is_fast_path(path: str) -> bool:
    return _fast_match(path) is not None


class FastPathHandler(ASGIHandler):
    """Django's ASGIHandler minus middleware, request signals and per-request threads."""

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    def resolve_request(self, request):
        # Resolving walks every URL pattern (the admin and management API come
        # first); the match was already made, and cached, to choose this handler.
        match = _fast_match(request.path_info)
        request.resolver_match = match
        return match

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return
        # As in Django: watch for the client leaving while the view runs, and
        # cancel the view (so a relayed stream stops its upstream call).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(self._respond(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        body_file.close()

    async def _respond(self, request, send):
        response = await self._middleware_chain(request)
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass
        finally:
            # Our responses hold no resources that need a thread to close.
            response._resource_closers.clear()
            response.closed = True
