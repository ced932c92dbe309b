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

Issue 20 (profiled with py-spy at c=64, tests/bench/README.md) trimmed what was left of
Django's per-request machinery here: the request's headers are a plain dict read once
from the scope (``request.headers`` raised and caught a KeyError for every absent header
it was asked for); a small body is read into memory rather than a temporary file; one
task watches for the client leaving, not two plus ``asyncio.wait``; and responses go out
as ASGI messages directly, a stream's batches without Django's iterator layers, the
security headers (``panel.security``) added here instead of in a wrapper around ``send``.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from contextlib import aclosing
from functools import cached_property, lru_cache

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.urls import Resolver404, get_resolver, set_script_prefix

from ai.gateway.streaming import wire
from panel import http, security
from panel.conf import hot


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


class Headers(dict):
    """A request's headers by lower-case name, what ``request.headers`` gives the views.

    As Django's ``HttpHeaders``: names are case-insensitive, repeated headers are joined
    with ",", and names with an underscore are left out (they could pose as a dashed
    one). Unlike it, an absent header costs a dict lookup, not a KeyError.
    """

    __slots__ = ()

    @classmethod
    def from_scope(cls, scope) -> Headers:
        headers = cls()
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            if "_" in name:
                continue
            value = raw_value.decode("latin-1")
            seen = dict.get(headers, name)
            dict.__setitem__(headers, name, value if seen is None else f"{seen},{value}")
        return headers

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


class FastRequest(ASGIRequest):
    """Django's ASGIRequest with its ``META`` built on first read.

    ``META`` holds every header under its CGI name (and the content type's parameters are
    read from it): ~10 us a request on the fast path (issue 20, tests/bench/README.md),
    whose views read the headers from ``Headers`` and the body as given. Here the
    request starts with what Django sets besides META; the first read of ``META``,
    ``content_type`` or ``content_params`` builds them as ``ASGIRequest`` does (it is
    built once, for them). The query string is decoded at once, so a request whose
    query string is not UTF-8 is still refused before the view (400), as Django refuses it.
    """

    def __init__(self, scope, body_file, script_name: str = "") -> None:
        self.scope = scope
        self._post_parse_error = False
        self._read_started = False
        self.resolver_match = None
        self.path = path = scope["path"]
        self.script_name = script_name
        self.path_info = path.removeprefix(script_name) if script_name else path
        self.method = scope["method"].upper()
        query_string = scope.get("query_string", "")
        if isinstance(query_string, bytes):
            query_string.decode()  # UnicodeDecodeError: a 400 (create_request)
        self._stream = body_file

    @cached_property
    def META(self) -> dict:  # noqa: N802 (Django's name)
        full = ASGIRequest(self.scope, self._stream)
        self.content_type, self.content_params = full.content_type, full.content_params
        if full._encoding is not None and self._encoding is None:
            self._encoding = full._encoding
        return full.META

    def __getattr__(self, name: str):
        # Only for attributes not set: the ones ``META`` brings with it.
        if name in ("content_type", "content_params"):
            self.META  # noqa: B018 (sets them)
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def encoding(self):
        if "META" not in self.__dict__:
            self.META  # noqa: B018 (a charset in the content type sets it)
        return self._encoding

    @encoding.setter
    def encoding(self, value) -> None:
        ASGIRequest.encoding.fset(self, value)


def _keep_body(request, body_file) -> None:
    """Give the request its body, when in memory and within DATA_UPLOAD_MAX_MEMORY_SIZE.

    ``request.body`` would read it from the stream again and check its size against the
    setting four times (six settings reads). A body past the limit, or of a request whose
    Content-Length does not say its size (chunked), is left to Django, which refuses it.
    """
    if not isinstance(body_file, io.BytesIO):
        return
    body = body_file.getvalue()
    limit = hot.DATA_UPLOAD_MAX_MEMORY_SIZE
    if (limit is None or len(body) <= limit) and request.headers.get("content-length") == str(
        len(body)
    ):
        request._body = body


class FastPathHandler(ASGIHandler):
    """Django's ASGIHandler minus middleware, request signals and per-request threads."""

    request_class = FastRequest

    def create_request(self, scope, body_file, script_name: str = ""):
        # As Django's, with the script name already found; its errors as Django's.
        try:
            return self.request_class(scope, body_file, script_name), None
        except UnicodeDecodeError:
            return super().create_request(scope, body_file)

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = None  # the view is called directly (``_view_response``)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def _view_response(self, request):
        """The view's response, as Django's handler would get it with no middleware.

        Resolving walks every URL pattern (the admin and management API come first): the
        match was already made, and cached, to choose this handler. The views are async and
        render their own errors (``ai_route``); an exception that still escapes one becomes
        Django's response for it, as ``convert_exception_to_response`` makes it. Without
        Django's ``_get_response_async`` (view middleware, ATOMIC_REQUESTS, template
        responses: none apply) a request costs ~5 us less (issue 20).
        """
        match = _fast_match(request.path_info)
        request.resolver_match = match
        try:
            return await match.func(request, *match.args, **match.kwargs)
        except Exception as exc:
            return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)

    async def read_body(self, receive):
        """The body in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, past it in a temporary
        file (as Django's, which always starts one: ~5 us a request)."""
        limit = hot.FILE_UPLOAD_MAX_MEMORY_SIZE
        parts: list[bytes] = []
        size = 0
        spooled = None
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if spooled is not None:
                    spooled.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            if spooled is not None:
                spooled.write(chunk)
            elif chunk:
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    spooled = tempfile.SpooledTemporaryFile(max_size=limit, mode="w+b")  # noqa: SIM115 (closed by handle)
                    spooled.writelines(parts)
                    parts = []
            if not message.get("more_body", False):
                break
        if spooled is None:
            return io.BytesIO(parts[0] if len(parts) == 1 else b"".join(parts))
        spooled.seek(0)
        return spooled

    async def handle(self, scope, receive, send):
        secure = security.is_secure(scope)
        if not secure and hot.SECURE_SSL_REDIRECT:
            target = security.redirect_target(scope)
            if target is not None:
                return await security.send_redirect(send, target)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        prefix = hot.FORCE_SCRIPT_NAME or scope.get("root_path", "")  # get_script_prefix
        if prefix:  # else Django's default, "/", which no request task has changed
            set_script_prefix(prefix)
        request, error_response = self.create_request(scope, body_file, prefix)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send, secure=secure)
            return
        request.__dict__["headers"] = Headers.from_scope(scope)
        _keep_body(request, body_file)
        # As in Django: when the client leaves while the view runs, cancel the view (so a
        # relayed stream stops its upstream call). The view runs in this task. Our server
        # protocol (panel.http) calls back when the connection is lost; under another
        # server one more task waits for the disconnect.
        this = asyncio.current_task()
        hook = scope.get(http.DISCONNECT)
        if hook is not None:
            if hook.is_set():  # it left while the body was read: nobody to answer
                body_file.close()
                return
            left = hook
            hook.callback = this.cancel
        else:
            left = asyncio.Event()
            watcher = asyncio.create_task(self._cancel_on_disconnect(receive, this, left))
        try:
            await self._respond(request, send, secure)
        except asyncio.CancelledError:
            if not left.is_set():
                raise  # cancelled from outside (the server stopping): not ours to swallow
            this.uncancel()
        finally:
            if hook is not None:
                hook.callback = None
            else:
                watcher.cancel()
            body_file.close()

    async def _cancel_on_disconnect(self, receive, task: asyncio.Task, left: asyncio.Event):
        try:
            await self.listen_for_disconnect(receive)
        except RequestAborted:
            left.set()
            task.cancel()

    async def _respond(self, request, send, secure: bool):
        response = await self._view_response(request)
        try:
            await self.send_response(response, send, secure=secure)
        finally:
            # Our responses hold no resources that need a thread to close.
            response._resource_closers.clear()
            response.closed = True

    async def send_response(self, response, send, *, secure: bool = False):
        """The response as ASGI messages, with the security headers it does not set itself.

        A gateway stream (``relay_batches``, set by ``ai.api.base.render``) goes out one
        write a batch of events, straight from the relay; other streams as Django sends
        them (one write a chunk).
        """
        # The (name, value) pairs Django keeps (``response.items()`` looks each one up again).
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers._store.values()
        ]
        for cookie in response.cookies.values():
            headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
        headers += security.missing_headers(headers, secure=secure)
        if not response.streaming:
            content = response.content
            if not response.has_header("Content-Length"):  # else uvicorn sends it chunked
                headers.append((b"content-length", str(len(content)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": content})
            return
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        batches = getattr(response, "relay_batches", None)
        if batches is None:
            async with aclosing(aiter(response)) as content:
                async for part in content:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
        else:
            try:
                async for batch in batches:
                    await send(
                        {"type": "http.response.body", "body": wire(batch), "more_body": True}
                    )
            finally:
                # Closed here, the relay's own ``finally`` (the usage event) runs now, also
                # when the client left mid-stream, not when the generator is collected.
                await batches.aclose()
        await send({"type": "http.response.body"})
