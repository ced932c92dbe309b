"""/llama-cpp/{name}/<route> (seed 003): llama.cpp's own routes of an instance, relayed.

Authenticated as the gateway is (a key with the proxy permission, or a session);
``ai.gateway.passthrough`` decides who may use the instance, starts it on demand
and records the usage of the routes that generate tokens. The answer is relayed
as the server sends it (a ``stream`` completion as SSE).
"""

from __future__ import annotations

from django.views.decorators.csrf import csrf_exempt

from accounts.models import Permission
from panel.errors import NotFound, error_response

from ...gateway import passthrough
from ..base import ai_route
from .proxy import forward, relayed, request_body

# Each route and the methods seed 003 gives it ("" is the server's web page).
ROUTES = {
    "": ("GET",),
    "completion": ("POST",),
    "tokenize": ("POST",),
    "detokenize": ("POST",),
    "embeddings": ("POST",),
    "infill": ("POST",),
    "apply-template": ("POST",),
    "props": ("GET", "POST"),
    "slots": ("GET",),
    "metrics": ("GET",),
    "reranking": ("POST",),
}


def llama_cpp_view(route: str, methods: tuple[str, ...]):
    """The view relaying ``route`` to the instance named in the URL."""

    @ai_route(methods=dict.fromkeys(methods, Permission.PROXY))
    async def view(request, identity, request_id, name: str):
        body = request_body(request)
        call = await passthrough.prepare(
            identity=identity,
            name=name,
            route=route,
            method=request.method,
            body=body,
            request_id=request_id,
        )
        address = call.instance.address
        try:
            reply = await forward(
                request, request_id, name=name, address=address, path=route, body=body
            )
        except BaseException as exc:
            call.end(exc)
            raise
        call.replied(reply.status)
        return relayed(reply, on_chunk=call.feed, on_end=call.end)

    view.__name__ = view.__qualname__ = f"llama_cpp_{route.replace('-', '_') or 'page'}"
    return view


VIEWS = {route: llama_cpp_view(route, methods) for route, methods in ROUTES.items()}


@csrf_exempt
def route_not_found(request, *args, **kwargs):
    """Any other path under /llama-cpp/: the API's JSON 404, for a POST too (nothing changes)."""
    return error_response(NotFound(f"No route for {request.method} {request.path}."))
