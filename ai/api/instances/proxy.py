"""GET/POST /api/v1/instances/{name}/proxy/<path>: a request relayed to a running instance.

Async and streamed (a chat completion may be a long SSE stream), through the
gateway's pooled client. It never starts an instance (seed 003: "does not
autostart instance if stopped"): a stopped one answers 503 instance_not_running.
``forward`` and ``relayed`` serve the llama.cpp routes too (``llamacpp``).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import aiohttp
from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import StreamingHttpResponse
from yarl import URL

from accounts.authentication import Identity
from accounts.models import Permission, User
from panel.errors import (
    InstanceNotRunning,
    PayloadTooLarge,
    PermissionDenied,
    UpstreamError,
)

from ...gateway import upstream
from ...gateway.resolve import key_may_use_instance
from ...instances import client
from ...instances.selectors import instance_get
from ...models import InstanceStatus
from ..base import ai_route

# A generation may be slow to start and long; a server silent this long has hung.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
# What a read needs (GET) and what may change the server's state (POST).
ROLE_ACTIONS = {"GET": "view", "POST": "change"}
FORWARDED_HEADERS = ("Content-Type", "Accept")


@sync_to_async
def _target(identity: Identity, method: str, name: str) -> str:
    """The origin (``http://host:port``) of the instance to relay to, if the caller is staff
    or holds the instance permission and its key (if any) may use the instance."""
    user = User.objects.filter(pk=identity.user_id, is_active=True).first()
    if user is None or not (user.is_staff or user.has_perm(f"ai.{ROLE_ACTIONS[method]}_instance")):
        raise PermissionDenied("This needs the admin or model_manager role.")
    instance = instance_get(name=name)
    if not key_may_use_instance(identity.key, instance.pk):
        raise PermissionDenied(f"This API key may not use the instance '{name}'.")
    origin = client.instance_origin(instance)
    if instance.status != InstanceStatus.RUNNING or origin is None:
        raise InstanceNotRunning(
            f"The instance '{name}' is {instance.status}; start it first "
            f"(POST /api/v1/instances/{name}/start)."
        )
    return origin


def _url(origin: str, path: str, query: str) -> URL:
    target = f"{origin}/{quote(path, safe='/:@!$&()*+,;=-._~')}"
    return URL(f"{target}?{query}" if query else target, encoded=True)


def request_body(request) -> bytes | None:
    if request.method != "POST":
        return None
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise PayloadTooLarge("The request body is too large.") from exc


async def _relay(reply: aiohttp.ClientResponse, on_chunk, on_end):
    error = None
    try:
        async for chunk in reply.content.iter_any():
            on_chunk(chunk)
            yield chunk
    except BaseException as exc:
        error = exc
        raise
    finally:
        reply.release()
        on_end(error)


async def forward(
    request, request_id: str, *, name: str, address: str, path: str, body: bytes | None
) -> aiohttp.ClientResponse:
    """The request as sent to the instance's server at ``address`` (its root URL),
    its answer's body still unread; UpstreamError when the server does not answer."""
    headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
    headers["X-Request-Id"] = upstream.upstream_request_id(request_id)
    try:
        return await upstream.session().request(
            request.method,
            _url(address, path, request.META.get("QUERY_STRING", "")),
            data=body,
            headers=headers,
            timeout=TIMEOUT,
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        raise UpstreamError(
            f"The instance '{name}' did not answer ({type(exc).__name__})."
        ) from exc


def relayed(
    reply: aiohttp.ClientResponse,
    *,
    on_chunk: Callable[[bytes], None] = lambda chunk: None,
    on_end: Callable[[BaseException | None], None] = lambda error: None,
) -> StreamingHttpResponse:
    """The server's answer, streamed to the client as it comes: ``on_chunk`` sees each
    piece, ``on_end`` runs once it is over (with what broke it off, if anything)."""
    content_type = reply.headers.get("Content-Type", "application/octet-stream")
    response = StreamingHttpResponse(
        _relay(reply, on_chunk, on_end), status=reply.status, content_type=content_type
    )
    if content_type.startswith("text/event-stream"):
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    return response


@ai_route(methods={"GET": Permission.MANAGE, "POST": Permission.MANAGE})
async def instance_proxy(request, identity, request_id, name: str, path: str = ""):
    address = await _target(identity, request.method, name)
    reply = await forward(
        request, request_id, name=name, address=address, path=path, body=request_body(request)
    )
    return relayed(reply)
