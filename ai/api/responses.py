"""The Responses API (``/v1/responses``), translated to chat completions at the edge.

The request goes through the same pipeline as a chat completion (route name
``responses`` on its UsageEvent): admission, limits, wallet, failover and
usage apply unchanged. ``ai.gateway.responses`` translates, ``responses_events``
retells a stream, ``responses_store`` keeps stored responses per tenant. An
upstream that serves the Responses API (``speaks_responses``) gets the request
passed through instead (``responses_passthrough``); one failover may mix both.
A request that chat completions cannot carry goes only to those upstreams (and
is refused, 400, for a model without one). ``GET /v1/responses/{id}?stream=true``
replays a stored response as its event stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from accounts.models import Permission
from panel.errors import InvalidRequest, NotFound, UpstreamError

from ..gateway import pipeline, response_cache, responses, responses_output, responses_store
from ..gateway import responses_passthrough as passthrough
from ..gateway.pipeline import Call, Native, Route, Stream
from ..gateway.resolve import CHAT, resolve
from ..gateway.responses import ResponsesRequest
from ..gateway.responses_events import ResponseEvents, replay
from ..gateway.responses_passthrough import ResponsesRelay
from ..gateway.responses_store import Tenant
from .base import ai_route, json_body, json_response, render

RESPONSES_ROUTE = Route("responses", "chat/completions", CHAT, "messages", streams=True)
LIST_LIMIT = 100


@ai_route(methods={"POST": Permission.PROXY})
async def responses_create(request, identity, request_id):
    parsed = responses.request_parse(json_body(request))
    tenant = responses_store.tenant_of(identity)
    history = await _history(parsed, tenant)
    items = history + parsed.items
    cache = request.headers.get(response_cache.HEADER)
    relays: list[ResponsesRelay] = []
    native = Native(
        speaks=passthrough.speaks_responses,
        path=passthrough.RESPONSES_PATH,
        body=passthrough.passthrough_body(parsed, history),
        relay=_relay_maker(parsed, relays),
    )
    call = await _prepare(identity, parsed, items, request_id, cache, native)
    if parsed.stream:
        result = await pipeline.open_stream(call)
        if isinstance(result, Stream):
            if result.native:
                batches = _relayed(call, parsed, result, relays, items, tenant)
            else:
                batches = _events(call, parsed, result, items, tenant)
            result = Stream(batches, result.headers)
        return render(result)
    reply = await pipeline.call_json(call)
    if reply.status < 400 and reply.native:
        reply.payload = await _relayed_response(call, parsed, reply.payload, items, tenant)
    elif reply.status < 400:
        reply.payload = await _response(call, parsed, reply.payload, items, tenant)
    return render(reply)


@ai_route(methods={"GET": Permission.READ, "DELETE": Permission.PROXY})
async def response_detail(request, identity, request_id, response_id: str):
    tenant = responses_store.tenant_of(identity)
    if request.method == "DELETE":
        if not await responses_store.response_delete(response_id, tenant=tenant):
            raise _not_found(response_id)
        return json_response({"id": response_id, "object": "response", "deleted": True})
    stored = await responses_store.response_get(response_id, tenant=tenant)
    if stored is None:
        raise _not_found(response_id)
    if _replayed(request.GET):
        return render(Stream(_once(replay(stored.response)), {}))
    return json_response(stored.response)


def _replayed(query) -> bool:
    stream = query.get("stream", "false")
    if stream not in ("true", "false"):
        raise InvalidRequest("'stream' must be true or false.", param="stream")
    return stream == "true"


async def _once(events: list[bytes]) -> AsyncIterator[list[bytes]]:
    yield events


@ai_route(methods={"GET": Permission.READ})
async def response_input_items(request, identity, request_id, response_id: str):
    tenant = responses_store.tenant_of(identity)
    stored = await responses_store.response_get(response_id, tenant=tenant)
    if stored is None:
        raise _not_found(response_id)
    items = _page(stored.input_items, request.GET)
    return json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": bool(items) and items[-1] is not _ordered(stored, request.GET)[-1],
        }
    )


def _ordered(stored, query) -> list[dict]:
    return stored.input_items if query.get("order") == "asc" else stored.input_items[::-1]


def _page(items: list[dict], query) -> list[dict]:
    """OpenAI's paging: ``order`` (desc by default), ``after`` an item id, ``limit`` 1-100."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    limit = query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= LIST_LIMIT:
        raise InvalidRequest(f"'limit' must be from 1 to {LIST_LIMIT}.", param="limit")
    ordered = items if order == "asc" else items[::-1]
    if after := query.get("after"):
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"No input item has the id '{after}'.", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    return ordered[: int(limit)]


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


async def _history(parsed: ResponsesRequest, tenant: Tenant) -> list[dict]:
    """The items of the conversation ``previous_response_id`` continues (none without it)."""
    previous_id = parsed.previous_response_id
    if previous_id is None:
        return []
    previous = await responses_store.response_get(previous_id, tenant=tenant)
    if previous is None:
        raise NotFound(
            f"Previous response with id '{previous_id}' not found.", param="previous_response_id"
        )
    return previous.input_items + previous.response["output"]


async def _prepare(
    identity,
    parsed: ResponsesRequest,
    items: list[dict],
    request_id: str,
    cache: str | None,
    native: Native,
) -> Call:
    items = responses.truncated(parsed, items, await _context(identity, parsed))
    body = responses.chat_body(parsed, items)
    # What the translation cannot carry, of the history too (chat_body adds it).
    native = replace(native, untranslatable=parsed.untranslatable)
    try:
        return await pipeline.prepare(
            identity=identity,
            route=RESPONSES_ROUTE,
            body=body,
            request_id=request_id,
            cache=cache,
            native=native,
        )
    except InvalidRequest as exc:
        if exc.param != "max_tokens":
            raise
        # The model's own output limit, checked on the chat request: say it in our terms.
        message = exc.message.replace("max_tokens", "max_output_tokens")
        raise InvalidRequest(message, param="max_output_tokens") from exc


async def _context(identity, parsed: ResponsesRequest) -> int | None:
    """The model's context size (tokens) for ``truncation: auto``; None when not asked."""
    model = parsed.body.get("model")
    if parsed.body.get("truncation") != "auto" or not isinstance(model, str):
        return None
    resolution = await resolve(identity=identity, kinds=CHAT, model_name=model)
    return resolution.model.config.get("context_window")


async def _response(
    call: Call, parsed: ResponsesRequest, payload: dict | None, items: list, tenant: Tenant
) -> dict:
    """The Response object of a chat completion, stored when the request asks for it."""
    choices = (payload or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("The upstream's answer was not a chat completion.")
    message, finish_reason = choices[0].get("message") or {}, choices[0].get("finish_reason")
    response = responses_output.response_object(
        parsed,
        model=call.resolution.model.name,
        output=responses_output.output_items(message),
        status=responses_output.status_of(finish_reason),
        usage=responses_output.usage_block(call.record.usage),
        finish_reason=finish_reason,
    )
    await _store(call, parsed, items, response, tenant)
    return response


def _relay_maker(parsed: ResponsesRequest, relays: list[ResponsesRelay]):
    """The pipeline's relay factory for a passed-through stream; keeps each relay made."""

    def make(public_model: str) -> ResponsesRelay:
        relays.append(ResponsesRelay(parsed, public_model))
        return relays[-1]

    return make


async def _relayed_response(
    call: Call, parsed: ResponsesRequest, payload: dict | None, items: list, tenant: Tenant
) -> dict:
    """A passed-through upstream's response object, stored when the request asks for it."""
    if payload is None or not isinstance(payload.get("id"), str):
        raise UpstreamError("The upstream's answer was not a response object.")
    response = passthrough.client_view(payload, parsed, call.resolution.model.name)
    await _store(call, parsed, items, response, tenant)
    return response


async def _relayed(
    call: Call,
    parsed: ResponsesRequest,
    stream: Stream,
    relays: list[ResponsesRelay],
    items: list,
    tenant: Tenant,
) -> AsyncIterator[list[bytes]]:
    """A passed-through stream as relayed; its final response is stored before its event."""
    stored = False
    try:
        async for batch in stream.batches:
            # The relay has read this batch: the final response is stored before it goes out.
            if not stored and relays and relays[-1].response is not None:
                await _store(call, parsed, items, relays[-1].response, tenant)
                stored = True
            yield batch
    finally:
        await stream.batches.aclose()


async def _store(call: Call, parsed: ResponsesRequest, items: list, response: dict, tenant) -> None:
    # Written before the client gets the reply (or the stream's last event): any replica
    # then finds it.
    if parsed.store and response["status"] != "failed":
        await responses_store.response_save(
            tenant=tenant,
            model_name=call.resolution.model.name,
            input_items=items,
            response=response,
        )


async def _events(
    call: Call, parsed: ResponsesRequest, stream: Stream, items: list, tenant: Tenant
) -> AsyncIterator[list[bytes]]:
    """The Responses events of a relayed chat stream; its end stores the response first."""
    events = ResponseEvents(parsed, model=call.resolution.model.name)
    chunks = stream.batches
    try:
        # The relay is started before the first write, so a client that leaves at
        # once still ends it (and its usage event) rather than leaving it unstarted.
        first = await anext(chunks, [])
        yield events.start() + [out for raw in first for out in events.chunk(raw)]
        async for batch in chunks:
            if out := [out for raw in batch for out in events.chunk(raw)]:
                yield out
    finally:
        await chunks.aclose()
    closing = events.finish(call.record.usage)
    await _store(call, parsed, items, events.response, tenant)
    yield closing
