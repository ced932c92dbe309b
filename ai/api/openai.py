"""The OpenAI-compatible routes, mounted under every base URL the seeds use."""

from __future__ import annotations

from collections.abc import Callable

from accounts.models import Permission
from panel.errors import InvalidRequest, ModelNotFound

from ..gateway import pipeline, response_cache
from ..gateway.pipeline import CHAT_ROUTE, COMPLETION_ROUTE, EMBEDDING_ROUTE, IMAGE_ROUTE, Route
from ..selectors import ModelInfo
from .base import ai_route, json_body, json_response, render, visible_models


def proxy_view(route: Route, *, adapt: Callable[[dict], dict] | None = None, name: str = ""):
    """The POST view relaying ``route`` to its model's upstreams: JSON, or SSE when asked.

    ``adapt`` turns the body of a route that accepts more than the upstream's shape into it.
    """

    @ai_route(methods={"POST": Permission.PROXY})
    async def view(request, identity, request_id):
        body = json_body(request)
        if adapt is not None:
            body = adapt(body)
        call = await pipeline.prepare(
            identity=identity,
            route=route,
            body=body,
            request_id=request_id,
            cache=request.headers.get(response_cache.HEADER),
        )
        if call.record.is_stream:
            return render(await pipeline.open_stream(call))
        return render(await pipeline.call_json(call))

    view.__name__ = view.__qualname__ = name or route.name.replace(".", "_")
    view.route = route
    return view


chat_completions = proxy_view(CHAT_ROUTE)
completions = proxy_view(COMPLETION_ROUTE)
embeddings = proxy_view(EMBEDDING_ROUTE)
images_generations = proxy_view(IMAGE_ROUTE)
# Each is served at the OpenAI path it relays to (urls.py).
PROXY_VIEWS = (chat_completions, completions, embeddings, images_generations)


def inference_body(body: dict) -> dict:
    """botserver's inference body (seed 004) as a chat body: ``input`` becomes one user message.

    ``input`` is a text, or a list of texts and content parts (each text a text part).
    """
    if "input" not in body:
        return body
    if "messages" in body:
        raise InvalidRequest("Send either 'messages' or 'input', not both.", param="input")
    value = body["input"]
    if isinstance(value, list) and value:
        content = [{"type": "text", "text": v} if isinstance(v, str) else v for v in value]
    elif isinstance(value, str):
        content = value
    else:
        raise InvalidRequest(
            "'input' must be a string or a non-empty array of strings and content parts.",
            param="input",
        )
    rest = {k: v for k, v in body.items() if k != "input"}
    return {**rest, "messages": [{"role": "user", "content": content}]}


inference = proxy_view(CHAT_ROUTE, adapt=inference_body, name="inference")


def _model_object(model: ModelInfo) -> dict:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": "switchboard",
    }


@ai_route(methods={"GET": Permission.READ})
async def models_list(request, identity, request_id):
    models = await visible_models(identity)
    return json_response({"object": "list", "data": [_model_object(m) for m in models]})


@ai_route(methods={"GET": Permission.READ})
async def model_detail(request, identity, request_id, model_name: str):
    models = await visible_models(identity)
    model = next((m for m in models if m.name == model_name), None)
    if model is None:
        raise ModelNotFound(
            f"The model '{model_name}' does not exist or you do not have access to it.",
            param="model",
            available_models=[m.name for m in models],
        )
    return json_response(_model_object(model))
