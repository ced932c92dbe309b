"""The request path end to end, for one admitted request.

``prepare`` checks, resolves and admits; ``call_json`` and ``open_stream``
try the model's upstreams in order (``_failover``), failing over while no
byte has reached the client, and start an instance on demand when no running
upstream answered (a route's ``Native`` request goes as the client sent it to
the upstreams that speak its protocol, translated to the others unless the
translation is lossy (``Native.untranslatable``); an Anthropic-style upstream
gets a chat-protocol call translated to Messages (``anthropic.messages_body``)
and nothing else); every admitted request ends in
exactly one ``usage_record``. An instance's upstream is marked in use (``activity``) from
its first attempt (or its start) until that event. What they return is data
(``Reply``, ``Stream``): the routes and the chat page render it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from accounts.authentication import Identity
from panel import fastjson
from panel.errors import (
    AgentUnavailable,
    ApiError,
    InvalidRequest,
    ModelNotAvailable,
    UpstreamError,
    UpstreamRateLimited,
)

from ..instances import activity
from ..models import ApiStyle, UsageStatus
from ..selectors import UpstreamInfo
from . import (
    anthropic,
    http1,
    ledger,
    observability,
    response_cache,
    responses_store,
    router,
    starts,
    streaming,
)
from .accounting import Record, usage_record
from .admission import admit
from .leases import leases
from .pricing import Usage, estimated_usage, reply_usage
from .resolve import CHAT, COMPLETION, EMBEDDING, IMAGE, Resolution, resolve
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


CHAT_ROUTE = Route("chat.completions", "chat/completions", CHAT, "messages", streams=True)
COMPLETION_ROUTE = Route("completions", "completions", COMPLETION, "prompt", streams=True)
EMBEDDING_ROUTE = Route("embeddings", "embeddings", EMBEDDING, "input")
IMAGE_ROUTE = Route("images.generations", "images/generations", IMAGE, "prompt")


class StreamRelay(Protocol):
    """Per-stream state of a relay: rewrites events and tallies what was delivered."""

    usage: Usage | None
    content_events: int  # the content pieces relayed (an estimate of the tokens)
    content_seen: bool  # some content was relayed (the first token's time)
    saw_done: bool  # the stream's last event was relayed: the reply is whole

    # A read's events (``streaming.Batch``, iterable): the events to send on, as a list
    # or (the chat relay) a Batch.
    def relay_batch(self, events: Iterable[bytes]) -> Iterable[bytes]: ...

    def error_event(self, error: ApiError) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Native:
    """A request that the upstreams speaking its protocol take as the client sent it.

    The route sets it on its Call; the other upstreams (in the same failover) get the
    route's translation (``Call.body`` to ``Route.path``). A Reply or Stream from such
    an upstream has ``native`` set: the route relays it rather than translating it back.
    """

    speaks: Callable[[UpstreamInfo], bool]
    path: str  # below the upstream's base URL
    body: dict  # the client's body; ``model`` becomes the upstream's
    relay: Callable[[str], StreamRelay]  # a stream's relay, given the public model name
    headers: dict[str, str] = field(default_factory=dict)  # the client's, sent on as they are
    # What the route's translation could not carry (the 400 it would answer): set, only
    # the upstreams that speak the protocol may serve, and prepare refuses a model with none.
    untranslatable: ApiError | None = None


@dataclass(slots=True)
class Reply:
    """A whole answer: its JSON object, or the upstream's bytes when it sent no object."""

    status: int
    payload: dict | None
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    native: bool = False  # in the client's protocol, from an upstream that speaks it


@dataclass(slots=True)
class Stream:
    """An answer being streamed: batches of SSE events, as they arrive."""

    batches: AsyncIterator[Iterable[bytes]]  # lists of events, or ``streaming.Batch``es
    headers: dict[str, str]
    failure: str = ""  # set before the error event when the upstream fails mid-stream
    native: bool = False  # in the client's protocol, from an upstream that speaks it

    async def wire(self) -> AsyncIterator[bytes]:
        """The events as bytes for an HTTP client, one write a batch."""
        async for batch in self.batches:
            yield streaming.wire(batch)

    async def deltas(self) -> AsyncIterator[str]:
        """The content pieces of the reply; a mid-stream failure raises UpstreamError."""
        try:
            async for batch in self.batches:
                if self.failure:
                    raise UpstreamError(self.failure)
                for event in batch:
                    if piece := streaming.event_text(event):
                        yield piece
        finally:
            await self.batches.aclose()


@dataclass(slots=True)
class Call:
    route: Route
    body: dict
    resolution: Resolution
    record: Record
    client_wants_usage: bool = False
    # The response cache (``response_cache``): the request's key when its model caches,
    # the request header's mode, and what the reply's x-switchboard-cache header says.
    cache_key: str | None = None
    cache_mode: str = ""
    cache_status: str = ""
    native: Native | None = None  # passed through to the upstreams that speak it
    # Awaited before the request waits for an instance to start (the chat page says so).
    on_starting: Callable[[], Awaitable[None]] | None = None


async def prepare(
    *,
    identity: Identity,
    route: Route,
    body: dict,
    request_id: str,
    cache: str | None = None,
    native: Native | None = None,
) -> Call:
    """Check the fields the gateway reads, resolve the model and admit the request (steps 2, 3).

    ``cache`` is the request's x-switchboard-cache header (``response_cache``); ``native``
    the route's passthrough (``Native``): its untranslatable request is refused here, before
    admission, when no upstream of the model speaks its protocol.
    """
    body_check(body, required=route.required)
    cache_mode = response_cache.cache_mode(cache)
    resolution = await resolve(
        identity=identity,
        kinds=route.kinds,
        model_name=body.get("model"),
        model_id=body.get("modelId"),
    )
    if native is not None and native.untranslatable is not None:
        _native_check(native, resolution)
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
    record.admission = await admit(
        resolution=resolution,
        body=body,
        route_name=route.name,
        event=record.event_ids(),
        on_cancelled=lambda admission: _record_cancelled(record, admission),
    )
    call = Call(route=route, body=body, resolution=resolution, record=record, cache_mode=cache_mode)
    call.native = native
    # A lossy translation is no key: the cache may not answer for what it left out.
    lossless = native is None or native.untranslatable is None
    if lossless and resolution.model.response_cache_ttl and route.path in response_cache.PATHS:
        link = resolution.link
        tenant = f"org:{link.organisation_id}" if link.organisation_id else f"user:{link.user_id}"
        call.cache_key = response_cache.cache_key(
            tenant=tenant, model_id=resolution.model.id, path=route.path, body=body
        )
    return call


def _native_check(native: Native, resolution: Resolution) -> None:
    """Refuse an untranslatable request unless an upstream (running or startable) speaks it."""
    model = resolution.model
    if not any(native.speaks(u) for u in (*model.routable, *model.startable)):
        raise native.untranslatable


def _record_cancelled(record: Record, admission) -> None:
    """A caller that left while its reservation was being made: one event, reservation back."""
    record.admission = admission
    record.status = UsageStatus.CLIENT_CANCELLED
    _finish(record)


async def call_json(call: Call) -> Reply:
    """Steps 4-7 for a JSON response; the usage event is queued in every case."""
    try:
        if (stored := await _cache_lookup(call)) is not None:
            return _cached_reply(call, stored)
        reply = await _failover(call, _json_attempt)
        if reply.status == 200 and not reply.native:  # another protocol's reply: not cached
            _cache_save(call, reply.payload)
        return reply
    except asyncio.CancelledError:
        call.record.status = UsageStatus.CLIENT_CANCELLED
        raise
    finally:
        _finish(call.record)


async def open_stream(call: Call) -> Stream | Reply:
    """Find an upstream that sends a first event; fail over until then.

    Returns the stream to relay (its end queues the usage event), or a Reply
    when the upstream answered with a client error (4xx) before streaming.
    """
    try:
        stored = await _cache_lookup(call)
        if stored is not None and stored.get("object") in ("chat.completion", "text_completion"):
            return _cached_stream(call, stored)
        result = await _failover(call, _stream_attempt)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            call.record.status = UsageStatus.CLIENT_CANCELLED
        _finish(call.record)
        raise
    if isinstance(result, Reply):
        _finish(call.record)
    return result


async def shutdown() -> None:
    """Give leases back and write everything pending (ASGI lifespan shutdown): usage, stored and cached responses."""
    leases.release_all()
    await ledger.shutdown()
    await responses_store.flush()
    await response_cache.flush()
    await activity.shutdown()
    await starts.shutdown()


# --- Failover -------------------------------------------------------------------------


class _Retry(Exception):
    """An upstream's answer after which the next upstream is tried."""

    def __init__(self, status: int | None, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


async def _failover(call: Call, attempt: Callable[[Call, UpstreamInfo], Awaitable]):
    """``attempt`` each running upstream in order until one answers, then each instance
    that may be started on demand, once started."""
    model = call.resolution.model
    last = _Retry(None, "")
    await router.breaker.sync()
    for upstream in router.candidates(model):
        if not _serves(call, upstream):
            continue
        try:
            return await _attempt(call, attempt, upstream)
        except _Retry as exc:
            last = exc
    refused: ApiError | None = None
    for upstream in model.startable:
        if not _serves(call, upstream):
            continue
        try:
            started = await _start(call, upstream)
        except (ModelNotAvailable, AgentUnavailable) as exc:
            refused = exc
            continue
        try:
            return await _attempt(call, attempt, started)
        except _Retry as exc:
            last, refused = exc, None
    if refused is not None:
        raise _start_failed(call, refused)
    raise _all_failed(call, last)


def _serves(call: Call, upstream: UpstreamInfo) -> bool:
    """Whether the upstream can take the call: natively, or (when the route's translation
    carries the whole request) in OpenAI's protocol, or, a chat call, translated to
    Anthropic's Messages."""
    if _is_native(call, upstream):
        return True
    if call.native is not None and call.native.untranslatable is not None:
        return False
    if upstream.api_style == ApiStyle.OPENAI:
        return True
    return upstream.api_style == ApiStyle.ANTHROPIC and call.route.path == CHAT_ROUTE.path


def _is_native(call: Call, upstream: UpstreamInfo) -> bool:
    return call.native is not None and call.native.speaks(upstream)


def _to_messages(call: Call, upstream: UpstreamInfo) -> bool:
    """A chat call sent to an Anthropic-style upstream as Messages (and translated back)."""
    return upstream.api_style == ApiStyle.ANTHROPIC and not _is_native(call, upstream)


async def _attempt(
    call: Call, attempt: Callable[[Call, UpstreamInfo], Awaitable], upstream: UpstreamInfo
):
    """One upstream's answer; raises _Retry after a failure, counted by the breaker."""
    record, model = call.record, call.resolution.model
    record.attempts += 1
    record.upstream_id = upstream.id
    _use(call, upstream)
    try:
        result = await attempt(call, upstream)
    except _Retry as exc:
        failure = exc
    except RETRYABLE_ERRORS as exc:
        failure = _Retry(None, f"{upstream.name}: {type(exc).__name__}")
    else:
        await router.breaker.record_success(upstream.id, upstream_name=upstream.name)
        return result
    await router.breaker.record_failure(
        upstream.id, upstream_name=upstream.name, model_name=model.name
    )
    raise failure


async def _start(call: Call, upstream: UpstreamInfo) -> UpstreamInfo:
    """Start the upstream's instance (busy meanwhile, for the scheduler); its fresh upstream."""
    call.record.upstream_id = upstream.id
    _use(call, upstream)
    if call.on_starting is not None:
        await call.on_starting()
    await starts.instance_start(
        instance_id=upstream.instance_id, name=upstream.instance_name, node=upstream.instance_node
    )
    return await starts.started_upstream(call.resolution.model.id, upstream)


def _start_failed(call: Call, exc: ApiError) -> ApiError:
    record = call.record
    record.status, record.http_status = UsageStatus.UPSTREAM_ERROR, exc.status_code
    record.error = exc.message
    return exc


def _check_status(upstream: UpstreamInfo, status: int) -> None:
    if is_retryable_status(status):
        raise _Retry(status, f"{upstream.name}: HTTP {status}")


def _all_failed(call: Call, last: _Retry) -> ApiError:
    call.record.status = UsageStatus.UPSTREAM_ERROR
    call.record.error = last.error
    if last.status == 429:
        call.record.http_status = 429
        return UpstreamRateLimited()
    call.record.http_status = 502
    return UpstreamError(f"No upstream of model '{call.resolution.model.name}' answered.")


def _refused(call: Call, upstream: UpstreamInfo, status: int, data: bytes, ms: int) -> Reply:
    """The upstream refused the request itself (4xx): the client sees its answer."""
    record = call.record
    record.status, record.http_status = UsageStatus.UPSTREAM_ERROR, status
    record.error = f"HTTP {status}"
    payload = _object(data)
    if _to_messages(call, upstream):
        payload = anthropic.openai_error(status, payload)
    headers, native = _headers(call, upstream, ms), _is_native(call, upstream)
    return Reply(status, payload, b"" if payload else data, headers, native=native)


# --- JSON -----------------------------------------------------------------------------


async def _json_attempt(call: Call, upstream: UpstreamInfo) -> Reply:
    started = time.monotonic()
    response = await _send(call, upstream)
    async with response:
        data = await response.read()
    _check_status(upstream, response.status)
    upstream_ms = _elapsed_ms(started)
    if response.status >= 400:
        return _refused(call, upstream, response.status, data, upstream_ms)
    call.record.http_status = response.status
    return _json_reply(call, upstream, data, upstream_ms)


def _json_reply(call: Call, upstream: UpstreamInfo, data: bytes, upstream_ms: int) -> Reply:
    """Show the public model name, add the extension block, and read the usage."""
    record, headers = call.record, _headers(call, upstream, upstream_ms)
    native = _is_native(call, upstream)
    payload = _object(data)
    if payload is None:
        record.usage = estimated_usage(call.body)
        return Reply(200, None, data, headers, native=native)
    if _to_messages(call, upstream):
        payload = anthropic.chat_completion(payload, created=int(time.time()))
    if "model" in payload:
        payload["model"] = call.resolution.model.name
    if native:  # relayed as is but for the model's name
        record.usage = reply_usage(payload, call.body, counts_images=False)
        return Reply(200, payload, b"", headers, native=True)
    payload["x_switchboard"] = {
        "deployment_id": upstream.name,
        "model_identifier": upstream.upstream_model_id,
        "response_time_ms": upstream_ms,
        "request_id": record.request_id,
    }
    counts_images = call.route.name == "images.generations"
    record.usage = reply_usage(payload, call.body, counts_images=counts_images)
    return Reply(200, payload, b"", headers)


def _object(data: bytes) -> dict | None:
    try:
        payload = fastjson.loads(data)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


# --- Streams --------------------------------------------------------------------------


async def _stream_attempt(call: Call, upstream: UpstreamInfo) -> Stream | Reply:
    """The upstream's first event within its ``first_byte_timeout``, else the next upstream.

    One deadline, on the loop's clock, for the connection, the head and the first event:
    the upstream client's for the connection and head (``head_by``), then the body's reads'
    (``read_deadline``), rather than an ``asyncio.timeout`` block around them all (a timer
    a stream, ~4 us; issue 20). A first read that finds its data there arms no timer.
    """
    started = time.monotonic()
    by = asyncio.get_running_loop().time() + upstream.first_byte_timeout
    response: http1.Response | None = None
    try:
        response = await _send(call, upstream, head_by=by)
        response.read_deadline = by
        _check_status(upstream, response.status)
        if response.status >= 400:
            data = await response.read()
            response.release()
            return _refused(call, upstream, response.status, data, 0)
        batches = streaming.sse_batches(response)
        first = await anext(batches, None)
        if first is None:
            raise _Retry(None, f"{upstream.name}: the stream ended before its first event")
    except BaseException as exc:
        if response is not None:
            response.close()
        if isinstance(exc, http1.HeadTimeout | http1.IdleTimeout):
            wait = upstream.first_byte_timeout
            raise _Retry(None, f"{upstream.name}: no first event within {wait}s") from None
        raise
    call.record.http_status = 200
    native = _is_native(call, upstream)
    stream = Stream(None, _headers(call, upstream, _elapsed_ms(started)), native=native)
    public = call.resolution.model.name
    if native:
        relay = call.native.relay(public)
    elif _to_messages(call, upstream):
        relay = anthropic.ChatChunkRelay(
            public_model=public, include_usage=call.client_wants_usage, created=int(time.time())
        )
    else:
        relay = streaming.EventRelay(public_model=public, include_usage=call.client_wants_usage)
    stream.batches = _relay(call, stream, relay, response, first, batches, upstream.idle_timeout)
    return stream


async def _relay(
    call: Call,
    stream: Stream,
    relay: StreamRelay,
    response: http1.Response,
    first: streaming.Batch,
    batches: AsyncIterator[streaming.Batch],
    idle_timeout: float,
) -> AsyncIterator[Iterable[bytes]]:
    """Pass events on as they arrive; always ends by queueing the usage event.

    The wait for each read is bounded by ``idle_timeout``: a stream that stalls
    ends like one the upstream broke off (an error event, what was delivered billed).
    """
    record = call.record
    # The upstream's events, kept (only) to store the whole reply in the response cache;
    # a reply in another protocol (passed through, or translated from Messages) is not.
    is_chat_events = isinstance(relay, streaming.EventRelay)
    keep = call.cache_key and call.cache_mode != "no-store" and is_chat_events
    kept: list[bytes] | None = [] if keep else None
    loop = asyncio.get_running_loop()
    try:
        batch: streaming.Batch | None = first
        # Up to its last event ([DONE]): once it is relayed the reply is whole, whenever
        # the upstream hangs up.
        while batch is not None:
            if kept is not None:
                kept.extend(batch)
            out = relay.relay_batch(batch)
            _mark_first_token(record, relay)
            if relay.saw_done:
                # Stored before the client reads [DONE]: a client that asks again as soon
                # as its stream ends (the SDKs stop reading at [DONE]) finds the reply.
                if kept is not None:
                    chat = call.route.path == CHAT_ROUTE.path
                    _cache_save(call, response_cache.assemble(kept, chat=chat))
                if out:
                    yield out
                await _read_to_end(response)
                break
            if out:
                yield out
            # The next batch within idle_timeout: a deadline the body's reads keep to
            # (an asyncio.timeout here cost a timer a batch, waiting or not).
            response.read_deadline = loop.time() + idle_timeout
            batch = await anext(batches, None)
        else:
            raise aiohttp.ClientPayloadError("the upstream ended the stream early")
    except RETRYABLE_ERRORS as exc:
        record.status = UsageStatus.UPSTREAM_ERROR
        idle = isinstance(exc, http1.IdleTimeout)
        record.error = f"mid-stream: {'idle timeout' if idle else type(exc).__name__}"
        stream.failure = (
            f"The upstream sent nothing for {idle_timeout}s; the reply is incomplete."
            if idle
            else "The upstream failed mid-stream; the reply is incomplete."
        )
        yield [relay.error_event(UpstreamError(stream.failure))]
    except (asyncio.CancelledError, GeneratorExit):
        # A client that hangs up once it has read [DONE] got the whole reply.
        if not relay.saw_done:
            record.status = UsageStatus.CLIENT_CANCELLED
        raise
    finally:
        response.close()
        record.usage = relay.usage or estimated_usage(call.body, relay.content_events)
        _finish(record)


# After [DONE] most upstreams end the body in the next read. Read to that end, the
# connection goes back to the pool; closed before it, the connection is closed and the
# next stream connects again (a getaddrinfo in a thread and a TCP connect per stream). An upstream that keeps the connection open after [DONE]
# (llama-cpp-python's server) is waited for no longer than this.
END_OF_BODY_GRACE = 0.1


async def _read_to_end(response: http1.Response) -> None:
    content = response.content
    response.read_deadline = asyncio.get_running_loop().time() + END_OF_BODY_GRACE
    try:
        while not content.at_eof():
            await content.readany()
    except aiohttp.ClientError:  # IdleTimeout among them
        pass  # the connection is closed below, as without the grace


def _mark_first_token(record: Record, relay: StreamRelay) -> None:
    if record.ttft_ms is None and relay.content_seen:
        record.ttft_ms = _elapsed_ms(record.started_at)


# --- The response cache ---------------------------------------------------------------


async def _cache_lookup(call: Call) -> dict | None:
    """The stored reply when the request's model caches and the request allows it."""
    if call.cache_key is None:
        return None
    if call.cache_mode:
        call.cache_status = "refresh" if call.cache_mode == response_cache.REFRESH else "bypass"
        stored = None
    else:
        stored = await response_cache.lookup(call.cache_key)
        call.cache_status = "miss" if stored is None else "hit"
    observability.response_cache_used(call.resolution.model.name, call.cache_status)
    return stored


def _cache_save(call: Call, payload: dict | None) -> None:
    """Store a successful, complete, cacheable reply (the x_switchboard block left out)."""
    if call.cache_key is None or call.cache_mode == response_cache.NO_STORE or not payload:
        return
    if call.record.status != UsageStatus.OK or not response_cache.is_cacheable(payload):
        return
    reply = {k: v for k, v in payload.items() if k != "x_switchboard"}
    if "model" in reply:
        reply["model"] = call.resolution.model.name
    response_cache.save(call.cache_key, reply, call.resolution.model.response_cache_ttl)


def _cache_hit(call: Call, stored: dict) -> dict[str, str]:
    """Record a hit (no upstream, no cost; the reply's tokens); its response headers."""
    record = call.record
    record.is_cache_hit, record.http_status = True, 200
    record.usage = reply_usage(stored, call.body, counts_images=False)
    return {
        **record.admission.headers,
        "x-request-id": record.request_id,
        response_cache.HEADER: "hit",
    }


def _cached_reply(call: Call, stored: dict) -> Reply:
    headers = _cache_hit(call, stored)
    extension = {"cache": "hit", "request_id": call.record.request_id}
    return Reply(200, {**stored, "x_switchboard": extension}, b"", headers)


def _cached_stream(call: Call, stored: dict) -> Stream:
    """A stored reply replayed as the events of its stream (usage as the client asked)."""
    options = call.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    events = response_cache.replay(stored, include_usage=include_usage)
    return Stream(_replayed(call, events), _cache_hit(call, stored))


async def _replayed(call: Call, events: list[bytes]) -> AsyncIterator[list[bytes]]:
    record = call.record
    record.ttft_ms = _elapsed_ms(record.started_at)
    try:
        yield events
    except (asyncio.CancelledError, GeneratorExit):
        record.status = UsageStatus.CLIENT_CANCELLED
        raise
    finally:
        _finish(record)


# --- Shared ---------------------------------------------------------------------------


async def _send(
    call: Call, upstream: UpstreamInfo, *, head_by: float | None = None
) -> http1.Response:
    native, request_id = call.native, call.record.request_id
    stream = call.record.is_stream
    if native is not None and native.speaks(upstream):
        body = json.dumps({**native.body, "model": upstream.upstream_model_id}).encode()
        return await send(
            upstream,
            native.path,
            body,
            request_id=request_id,
            stream=stream,
            more=native.headers,
            head_by=head_by,
        )
    if _to_messages(call, upstream):
        body, path = _messages_body(call, upstream), anthropic.MESSAGES_PATH
    else:
        body, path = _upstream_body(call, upstream.upstream_model_id), call.route.path
    return await send(upstream, path, body, request_id=request_id, stream=stream, head_by=head_by)


def _upstream_body(call: Call, upstream_model_id: str) -> bytes:
    body = {k: v for k, v in call.body.items() if k not in LOCAL_FIELDS}
    body["model"] = upstream_model_id
    if call.record.is_stream:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        call.client_wants_usage = bool(options.get("include_usage"))
        options["include_usage"] = True
        body["stream_options"] = options
    return fastjson.dumps(body)


def _messages_body(call: Call, upstream: UpstreamInfo) -> bytes:
    """The chat body as Messages; a body that has no Messages form is the client's error."""
    if call.record.is_stream:
        options = call.body.get("stream_options")
        call.client_wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    try:
        body = anthropic.messages_body(
            call.body,
            model=upstream.upstream_model_id,
            default_max_tokens=call.resolution.model.max_output_tokens,
        )
    except InvalidRequest as exc:
        record = call.record
        record.status, record.http_status = UsageStatus.UPSTREAM_ERROR, exc.status_code
        record.error = exc.message
        raise
    return json.dumps(body).encode()


def _headers(call: Call, upstream: UpstreamInfo, upstream_ms: int) -> dict[str, str]:
    return {
        **call.record.admission.headers,
        "x-request-id": call.record.request_id,
        "x-switchboard-upstream": upstream.name,
        "x-switchboard-upstream-ms": str(upstream_ms),
        **({response_cache.HEADER: call.cache_status} if call.cache_status else {}),
    }


def _elapsed_ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def _use(call: Call, upstream: UpstreamInfo) -> None:
    """Mark the upstream's instance in use by this request (and no other it tried)."""
    record = call.record
    if record.in_use is not None and record.in_use[0] == upstream.instance_id:
        return
    _release(record)
    if upstream.instance_id is not None:
        record.in_use = (upstream.instance_id, call.resolution.link.priority)
        activity.begin(*record.in_use)


def _release(record: Record) -> None:
    if record.in_use is not None:
        activity.end(*record.in_use)
        record.in_use = None


def _finish(record: Record) -> None:
    _release(record)
    record.latency_ms = _elapsed_ms(record.started_at)
    usage_record(record)
