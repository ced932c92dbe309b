"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) over chat upstreams.

The body is translated to a chat completion at the edge (``ai.gateway.anthropic``)
and goes through the same pipeline as ``/v1/chat/completions``: admission,
limits, wallets, failover and one UsageEvent (route ``messages``). An upstream
that speaks Messages (``api_style`` anthropic) gets the body as sent instead
(``Call.native``, with the client's ``anthropic-beta`` header), and its answer
is relayed as is but for the model's name; one failover may mix both kinds. A
request the translation cannot carry (a document block, a server tool...) goes
only to those upstreams, and is refused (400) for a model without one.
Every error on these routes is rendered in Anthropic's shape. The key comes as
``x-api-key`` (what the SDK sends) or ``Authorization: Bearer``;
``anthropic-version`` is accepted and not required; on ``/v1/models`` it asks for
Anthropic's shape of the models list (``versioned``: a header check, the fast path kept).
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.models import Permission
from panel.errors import ApiError, FeatureDisabled, ModelNotFound, UpstreamError

from ..gateway import anthropic, pipeline, response_cache
from ..gateway.anthropic import MessageStream, message_events
from ..gateway.pipeline import Call, Native, Reply, Route, Stream
from ..gateway.resolve import CHAT, resolve
from ..selectors import ModelInfo
from .base import ai_route, json_body, json_response, render, visible_models

MESSAGES_ROUTE = Route("messages", "chat/completions", CHAT, "messages", streams=True)


def anthropic_error(error: ApiError | FeatureDisabled, request_id: str) -> HttpResponse:
    """The Anthropic routes' error renderer: ``{"type": "error", "error": {type, message}}``."""
    response = JsonResponse(anthropic.error_body(error, request_id), status=error.status_code)
    for name, value in getattr(error, "headers", {}).items():
        response[name] = value
    response["request-id"] = request_id
    return response


@ai_route(methods={"POST": Permission.PROXY}, errors=anthropic_error)
async def messages(request, identity, request_id):
    body = json_body(request)
    chat, untranslatable = anthropic.chat_translation(body)
    native = Native(
        speaks=anthropic.speaks_messages,
        path=anthropic.MESSAGES_PATH,
        body=body,
        relay=anthropic.MessagesRelay,
        headers=_passed_headers(request),
        untranslatable=untranslatable,
    )
    call = await pipeline.prepare(
        identity=identity,
        route=MESSAGES_ROUTE,
        body=chat,
        request_id=request_id,
        cache=request.headers.get(response_cache.HEADER),
        native=native,
    )
    if call.record.is_stream:
        result = await pipeline.open_stream(call)
        if isinstance(result, Stream):
            if result.native:
                return render(Stream(result.batches, _headers(result.headers, call)))
            return render(_message_stream(call, result))
    else:
        result = await pipeline.call_json(call)
    if result.native and result.status < 400:
        return render(
            Reply(result.status, result.payload, result.raw, _headers(result.headers, call))
        )
    return render(_message_reply(call, result))


@ai_route(methods={"POST": Permission.PROXY}, errors=anthropic_error)
async def count_tokens(request, identity, request_id):
    """The prompt's estimated tokens: resolved like a message (tenancy), never billed."""
    chat = anthropic.chat_body(json_body(request), counting=True)
    await resolve(identity=identity, kinds=CHAT, model_name=chat.get("model"))
    return json_response({"input_tokens": anthropic.prompt_estimate(chat)})


@ai_route(methods={"GET": Permission.READ}, errors=anthropic_error)
async def models_list(request, identity, request_id):
    """The caller's models in Anthropic's shape: one page (has_more false)."""
    models = [_model_object(m) for m in await visible_models(identity)]
    first, last = (models[0]["id"], models[-1]["id"]) if models else (None, None)
    return json_response({"data": models, "has_more": False, "first_id": first, "last_id": last})


@ai_route(methods={"GET": Permission.READ}, errors=anthropic_error)
async def model_detail(request, identity, request_id, model_name: str):
    model = next((m for m in await visible_models(identity) if m.name == model_name), None)
    if model is None:
        raise ModelNotFound(
            f"The model '{model_name}' does not exist or you do not have access to it.",
            param="model",
        )
    return json_response(_model_object(model))


def versioned(openai_view, anthropic_view):
    """One route's view: ``anthropic_view`` for a request with ``anthropic-version`` (the
    Anthropic SDK's), else ``openai_view``."""

    @csrf_exempt
    async def view(request, *args, **kwargs):
        chosen = anthropic_view if "anthropic-version" in request.headers else openai_view
        return await chosen(request, *args, **kwargs)

    view.fast_path = True
    view.openai_view, view.anthropic_view = openai_view, anthropic_view
    return view


def _model_object(model: ModelInfo) -> dict:
    created = datetime.fromtimestamp(model.created, tz=UTC).isoformat().replace("+00:00", "Z")
    return {
        "type": "model",
        "id": model.name,
        "display_name": model.display_name or model.name,
        "created_at": created,
    }


def _message_reply(call: Call, reply: Reply) -> Reply:
    if reply.status >= 400:
        raise anthropic.refusal_error(reply.status, reply.payload)
    if reply.payload is None:
        raise UpstreamError("The upstream's answer was not a chat completion.")
    message = anthropic.message_reply(
        reply.payload,
        chat=call.body,
        usage=call.record.usage,
        message_id=anthropic.message_id(call.record.request_id),
        model=call.resolution.model.name,
    )
    return Reply(200, message, headers=_headers(reply.headers, call))


def _message_stream(call: Call, stream: Stream) -> Stream:
    translation = MessageStream(
        chat=call.body,
        message_id=anthropic.message_id(call.record.request_id),
        model=call.resolution.model.name,
        prompt_estimate=anthropic.prompt_estimate(call.body),
    )
    return Stream(message_events(stream.batches, translation), _headers(stream.headers, call))


def _passed_headers(request) -> dict[str, str]:
    """The client's headers an Anthropic-style upstream gets as they are (its beta features)."""
    beta = request.headers.get("anthropic-beta")
    return {"anthropic-beta": beta} if beta else {}


def _headers(headers: dict[str, str], call: Call) -> dict[str, str]:
    return {**headers, "request-id": call.record.request_id}
