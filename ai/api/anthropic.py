"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) over chat upstreams.

The body is translated to a chat completion at the edge (``ai.gateway.anthropic``)
and goes through the same pipeline as ``/v1/chat/completions``: admission,
limits, wallets, failover and one UsageEvent (route ``messages``). An upstream
that speaks Messages (``api_style`` anthropic) gets the body as sent instead
(``Call.native``, with the client's ``anthropic-beta`` header), and its answer
is relayed as is but for the model's name; one failover may mix both kinds.
Every error on these routes is rendered in Anthropic's shape. The key comes as
``x-api-key`` (what the SDK sends) or ``Authorization: Bearer``;
``anthropic-version`` is accepted and not required.
"""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse

from accounts.models import Permission
from panel.errors import ApiError, FeatureDisabled, UpstreamError

from ..gateway import anthropic, pipeline, response_cache
from ..gateway.anthropic import MessageStream, message_events
from ..gateway.pipeline import Call, Native, Reply, Route, Stream
from ..gateway.resolve import CHAT, resolve
from .base import ai_route, json_body, json_response, render

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
    chat = anthropic.chat_body(body)
    call = await pipeline.prepare(
        identity=identity,
        route=MESSAGES_ROUTE,
        body=chat,
        request_id=request_id,
        cache=request.headers.get(response_cache.HEADER),
    )
    call.native = Native(
        speaks=anthropic.speaks_messages,
        path=anthropic.MESSAGES_PATH,
        body=body,
        relay=anthropic.MessagesRelay,
        headers=_passed_headers(request),
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
