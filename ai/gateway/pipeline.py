"""The request path end to end, for one admitted request.

``prepare`` resolves and admits; ``call_json`` and ``open_stream`` try the
model's upstreams in order, failing over while no byte has reached the client;
every admitted request ends in exactly one ``usage_record``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from accounts.authentication import Identity
from panel import redis as sb_redis
from panel.errors import ApiError, RateLimited, UpstreamError

from ..models import UsageStatus
from . import accounting, journal, router, streaming
from .accounting import Record, Usage, usage_from_block, usage_record
from .limits import admit
from .resolve import Resolution, resolve
from .upstream import RETRYABLE_ERRORS, is_retryable_status, send
from .validation import body_check

# Our own request fields, never sent upstream.
LOCAL_FIELDS = ("modelId",)


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # e.g. "chat.completions", recorded on the UsageEvent
    path: str  # the upstream path below its base URL
    kinds: frozenset[str]
    required: str  # the body field the route cannot do without
    streams: bool = False


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Stream:
    events: AsyncIterator[bytes]
    headers: dict[str, str]


@dataclass(slots=True)
class Call:
    route: Route
    body: dict
    resolution: Resolution
    record: Record
    client_wants_usage: bool = False


async def prepare(*, identity: Identity, route: Route, body: dict, request_id: str) -> Call:
    """Check the fields the gateway reads, resolve the model and admit the request (steps 2, 3)."""
    body_check(body, required=route.required)
    resolution = await resolve(
        identity=identity,
        kinds=route.kinds,
        model_name=body.get("model"),
        model_id=body.get("modelId"),
    )
    key = resolution.key
    record = Record(
        request_id=request_id,
        route=route.name,
        user_id=resolution.user.id,
        organisation_id=resolution.organisation_id,
        api_key_id=key.id if key else None,
        link_id=resolution.link.id,
        model=resolution.model,
        is_stream=body.get("stream") is True and route.streams,
        started_at=time.monotonic(),
    )
    event = _journal_event(record)
    record.admission = await admit(
        resolution=resolution,
        body=body,
        route_name=route.name,
        event=event,
        on_cancelled=lambda admission: _record_cancelled(record, admission),
    )
    record.is_journaled = _journal(event, record.admission)
    return Call(route=route, body=body, resolution=resolution, record=record)


def _journal_event(record: Record) -> dict:
    """The UsageEvent's ids, as the in-flight journal keeps them."""
    return {
        "request_id": record.request_id,
        "route": record.route,
        "is_stream": record.is_stream,
        "user_id": record.user_id,
        "organisation_id": record.organisation_id,
        "api_key_id": record.api_key_id,
        "link_id": record.link_id,
        "model_id": record.model.id,
        "model_name": record.model.name,
    }


def _journal(event: dict, admission) -> bool:
    """Journal the admission where a reconciler finds it if this process dies."""
    if sb_redis.is_configured():
        return journal.redis_add(event, admission)
    if admission.is_empty:
        return False  # nothing reserved; without Redis it is not journalled
    journal.db_heartbeat_start()
    return True  # the admission's transaction wrote it


def _record_cancelled(record: Record, admission) -> None:
    """A caller that left while its reservation was being made: one event, reservation back."""
    record.admission = admission
    record.status = UsageStatus.CLIENT_CANCELLED
    record.is_journaled = admission.event is not None and not sb_redis.is_configured()
    _finish(record)


def _upstream_body(call: Call, upstream_model_id: str) -> bytes:
    body = {k: v for k, v in call.body.items() if k not in LOCAL_FIELDS}
    body["model"] = upstream_model_id
    if call.record.is_stream:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        call.client_wants_usage = bool(options.get("include_usage"))
        options["include_usage"] = True
        body["stream_options"] = options
    return json.dumps(body).encode()


def _elapsed_ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def _headers(call: Call, upstream_name: str, upstream_ms: int) -> dict[str, str]:
    return {
        **call.record.admission.headers,
        "x-request-id": call.record.request_id,
        "x-switchboard-upstream": upstream_name,
        "x-switchboard-upstream-ms": str(upstream_ms),
    }


def _all_failed(call: Call, last_status: int | None, last_error: str) -> ApiError:
    call.record.status = "upstream_error"
    call.record.error = last_error
    if last_status == 429:
        call.record.http_status = 429
        return RateLimited("Every upstream of this model is rate limited; retry later.")
    call.record.http_status = 502
    return UpstreamError(f"No upstream of model '{call.resolution.model.name}' answered.")


async def call_json(call: Call) -> Reply:
    """Steps 4-7 for a JSON response; the usage event is queued in every case."""
    record = call.record
    try:
        return await _call_json(call)
    except asyncio.CancelledError:
        record.status = "client_cancelled"
        raise
    finally:
        record.latency_ms = _elapsed_ms(record.started_at)
        usage_record(record)


async def _call_json(call: Call) -> Reply:
    record, model = call.record, call.resolution.model
    last_status, last_error = None, ""
    await router.breaker.sync()
    for upstream in router.candidates(model):
        record.attempts += 1
        record.upstream_id = upstream.id
        started = time.monotonic()
        try:
            response = await send(
                upstream,
                call.route.path,
                _upstream_body(call, upstream.upstream_model_id),
                request_id=record.request_id,
            )
            async with response:
                data = await response.read()
        except RETRYABLE_ERRORS as exc:
            last_status, last_error = None, f"{upstream.name}: {type(exc).__name__}"
            await router.breaker.record_failure(
                upstream.id, upstream_name=upstream.name, model_name=model.name
            )
            continue
        if is_retryable_status(response.status):
            last_status, last_error = response.status, f"{upstream.name}: HTTP {response.status}"
            await router.breaker.record_failure(
                upstream.id, upstream_name=upstream.name, model_name=model.name
            )
            continue
        await router.breaker.record_success(upstream.id, upstream_name=upstream.name)
        upstream_ms = _elapsed_ms(started)
        headers = _headers(call, upstream.name, upstream_ms)
        record.http_status = response.status
        if response.status >= 400:
            # The upstream refused the request itself (4xx): the client sees its answer.
            record.status, record.error = "upstream_error", f"HTTP {response.status}"
            return Reply(response.status, data, headers)
        return Reply(200, _rewrite_json(call, data, upstream, upstream_ms), headers)
    raise _all_failed(call, last_status, last_error)


def _rewrite_json(call: Call, data: bytes, upstream, upstream_ms: int) -> bytes:
    """Show the public model name, add the extension block, and read the usage."""
    record = call.record
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        record.usage = Usage(prompt_tokens=accounting.estimate_prompt(call.body), is_estimated=True)
        return data
    if "model" in payload:
        payload["model"] = call.resolution.model.name
    payload["x_switchboard"] = {
        "deployment_id": upstream.name,
        "model_identifier": upstream.upstream_model_id,
        "response_time_ms": upstream_ms,
        "request_id": record.request_id,
    }
    record.usage = _json_usage(call, payload)
    return json.dumps(payload).encode()


def _json_usage(call: Call, payload: dict) -> Usage:
    images = len(payload.get("data") or ()) if call.route.name == "images.generations" else 0
    usage = usage_from_block(payload.get("usage"))
    if usage is None:
        usage = Usage(
            prompt_tokens=accounting.estimate_prompt(call.body),
            completion_tokens=accounting.estimate_tokens(_reply_text(payload)),
            is_estimated=True,
        )
    usage.images = images
    return usage


def _reply_text(payload: dict) -> str:
    """The generated text of a chat or text completion, for estimates."""
    parts = []
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            text = choice.get("text") or (
                message.get("content") if isinstance(message, dict) else ""
            )
            parts.append(text if isinstance(text, str) else "")
    return "".join(parts)


async def open_stream(call: Call) -> Stream | Reply:
    """Find an upstream that sends a first event; fail over until then.

    Returns the stream to relay, or a Reply when the upstream answered with a
    client error (4xx) before streaming.
    """
    record, model = call.record, call.resolution.model
    last_status, last_error = None, ""
    try:
        await router.breaker.sync()
        for upstream in router.candidates(model):
            record.attempts += 1
            record.upstream_id = upstream.id
            started = time.monotonic()
            response = None
            try:
                response = await send(
                    upstream,
                    call.route.path,
                    _upstream_body(call, upstream.upstream_model_id),
                    request_id=record.request_id,
                )
                if is_retryable_status(response.status):
                    last_status = response.status
                    last_error = f"{upstream.name}: HTTP {response.status}"
                    response.release()
                    await router.breaker.record_failure(
                        upstream.id, upstream_name=upstream.name, model_name=model.name
                    )
                    continue
                if response.status >= 400:
                    data = await response.read()
                    response.release()
                    await router.breaker.record_success(upstream.id, upstream_name=upstream.name)
                    record.status, record.http_status = "upstream_error", response.status
                    record.error = f"HTTP {response.status}"
                    _finish(record)
                    return Reply(response.status, data, _headers(call, upstream.name, 0))
                batches = streaming.sse_batches(response)
                first = await anext(batches)
            except (*RETRYABLE_ERRORS, StopAsyncIteration) as exc:
                last_status, last_error = None, f"{upstream.name}: {type(exc).__name__}"
                if response is not None:
                    response.close()
                await router.breaker.record_failure(
                    upstream.id, upstream_name=upstream.name, model_name=model.name
                )
                continue
            await router.breaker.record_success(upstream.id, upstream_name=upstream.name)
            record.http_status = 200
            headers = _headers(call, upstream.name, _elapsed_ms(started))
            return Stream(_relay(call, response, first, batches), headers)
    except asyncio.CancelledError:
        record.status = "client_cancelled"
        _finish(record)
        raise
    error = _all_failed(call, last_status, last_error)
    _finish(record)
    raise error


async def _relay(
    call: Call,
    response: aiohttp.ClientResponse,
    first: list[bytes],
    batches: AsyncIterator[list[bytes]],
) -> AsyncIterator[bytes]:
    """Pass events on as they arrive; always ends by queueing the usage event."""
    record = call.record
    relay = streaming.EventRelay(
        public_model=call.resolution.model.name, include_usage=call.client_wants_usage
    )
    try:
        out = relay.relay_batch(first)
        _mark_first_token(record, relay)
        if out:
            yield out
        async for batch in batches:
            out = relay.relay_batch(batch)
            _mark_first_token(record, relay)
            if out:
                yield out
        if not relay.saw_done:
            raise aiohttp.ClientPayloadError("the upstream ended the stream early")
    except RETRYABLE_ERRORS as exc:
        record.status, record.error = "upstream_error", f"mid-stream: {type(exc).__name__}"
        yield streaming.error_event("The upstream failed mid-stream; the reply is incomplete.")
    except (asyncio.CancelledError, GeneratorExit):
        record.status = "client_cancelled"
        raise
    finally:
        response.close()
        record.usage = relay.usage or Usage(
            prompt_tokens=accounting.estimate_prompt(call.body),
            completion_tokens=relay.content_events,
            is_estimated=True,
        )
        _finish(record)


def _mark_first_token(record: Record, relay: streaming.EventRelay) -> None:
    if record.ttft_ms is None and relay.content_events:
        record.ttft_ms = _elapsed_ms(record.started_at)


def _finish(record: Record) -> None:
    record.latency_ms = _elapsed_ms(record.started_at)
    usage_record(record)
