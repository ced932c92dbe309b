"""GET/POST /api/v1/instances/{name}/proxy/<path>: a request relayed to a running instance.

Async and streamed (a chat completion may be a long SSE stream), through the
gateway's pooled client. It never starts an instance (seed 003: "does not
autostart instance if stopped"): a stopped one answers 503 instance_not_running.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import StreamingHttpResponse
from yarl import URL

from accounts.models import Permission, User
from panel.errors import (
    ErrorCode,
    InstanceNotRunning,
    InvalidRequest,
    PermissionDenied,
    UpstreamError,
)

from ...gateway import upstream
from ...instances import client
from ...instances.selectors import instance_get
from ...models import Instance, InstanceStatus
from ..base import ai_route

# A generation may be slow to start and long; a server silent this long has hung.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
# What a read needs (GET) and what may change the server's state (POST).
ROLE_ACTIONS = {"GET": "view", "POST": "change"}
FORWARDED_HEADERS = ("Content-Type", "Accept")


@sync_to_async
def _target(user_id: int, method: str, name: str) -> Instance:
    """The instance to relay to, if the caller is staff or holds the instance permission."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None or not (user.is_staff or user.has_perm(f"ai.{ROLE_ACTIONS[method]}_instance")):
        raise PermissionDenied("This needs the admin or model_manager role.")
    instance = instance_get(name=name)
    if instance.status != InstanceStatus.RUNNING or not (instance.assigned_port or instance.port):
        raise InstanceNotRunning(
            f"The instance '{name}' is {instance.status}; start it first "
            f"(POST /api/v1/instances/{name}/start)."
        )
    return instance


def _url(instance: Instance, path: str, query: str) -> URL:
    host = client.instance_address(instance.node)
    port = instance.assigned_port or instance.port
    target = f"http://{host}:{port}/{quote(path, safe='/:@!$&()*+,;=-._~')}"
    return URL(f"{target}?{query}" if query else target, encoded=True)


def _body(request) -> bytes | None:
    if request.method != "POST":
        return None
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise InvalidRequest(
            "The request body is too large.", code=ErrorCode.REQUEST_TOO_LARGE
        ) from exc


async def _relay(reply: aiohttp.ClientResponse):
    try:
        async for chunk in reply.content.iter_any():
            yield chunk
    finally:
        reply.release()


@ai_route(methods={"GET": Permission.MANAGE, "POST": Permission.MANAGE})
async def instance_proxy(request, identity, request_id, name: str, path: str = ""):
    instance = await _target(identity.user_id, request.method, name)
    headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
    headers["X-Request-Id"] = upstream.upstream_request_id(request_id)
    body = _body(request)
    try:
        reply = await upstream.session().request(
            request.method,
            _url(instance, path, request.META.get("QUERY_STRING", "")),
            data=body,
            headers=headers,
            timeout=TIMEOUT,
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        raise UpstreamError(
            f"The instance '{name}' did not answer ({type(exc).__name__})."
        ) from exc
    content_type = reply.headers.get("Content-Type", "application/octet-stream")
    response = StreamingHttpResponse(_relay(reply), status=reply.status, content_type=content_type)
    if content_type.startswith("text/event-stream"):
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    return response
