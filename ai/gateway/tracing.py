"""OpenTelemetry traces of the gateway's requests: off unless configured.

``configure`` (at start-up) sets ``tracer`` when OTEL_TRACES is on (it is when
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set): spans go to
the OTLP HTTP exporter, which reads the standard OTEL_* variables itself. While
``tracer`` is None each hook on the request path is one None check: nothing of
OpenTelemetry is imported or called.

One SERVER span a request (``request_started``, ended by ``request_ended`` or, for a
stream, when its body ends, the client having left or not), named and attributed by the
GenAI semantic conventions once the request is known (``request_finished``:
gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens and
output_tokens, the time to the first token as an attribute and an event); a CLIENT span
for each upstream attempt (``upstream_started``), up to its response's headers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

tracer: Any = None  # an opentelemetry Tracer while tracing is on
_span: ContextVar[Any] = ContextVar("gateway_span", default=None)

# gen_ai.operation.name of each route (the conventions' well-known values).
OPERATIONS = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "images.generations": "generate_content",
    "responses": "chat",
    "messages": "chat",
}


def configure() -> None:
    """Turn tracing on when settings.OTEL_TRACES says so (OTLP over HTTP, batched)."""
    from django.conf import settings

    if not settings.OTEL_TRACES:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    enable(BatchSpanProcessor(OTLPSpanExporter()))


def enable(processor) -> None:
    """Send spans to ``processor`` (an SDK SpanProcessor) from now on."""
    global tracer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": "switchboard"}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("switchboard.gateway")


def disable() -> None:
    global tracer
    tracer = None


def request_started(request) -> Any:
    """The request's SERVER span, current for the rest of the request."""
    from opentelemetry.trace import SpanKind

    match = request.resolver_match
    route = f"/{match.route}" if match is not None else request.path
    span = tracer.start_span(
        f"{request.method} {route}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    )
    _span.set(span)
    return span


def request_ended(span, response) -> None:
    """End the span with the response; a streamed body's span ends when the body does."""
    span.set_attribute("http.response.status_code", response.status_code)
    if response.status_code >= 500:
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR)
    if response.streaming:
        response.streaming_content = _ending(response.streaming_content, span)
        if getattr(response, "relay_batches", None) is not None:  # what the fast path sends
            response.relay_batches = _ending(response.relay_batches, span)
    else:
        span.end()


async def _ending(content: AsyncIterator, span) -> AsyncIterator:
    try:
        async for chunk in content:
            yield chunk
    finally:
        # The client may have left mid-stream: the relay below still ends (and is
        # accounted) before the span does.
        closing = getattr(content, "aclose", None)
        if closing is not None:
            await closing()
        span.end()


def request_finished(record) -> None:
    """The GenAI attributes of an accounted request on its span (if it has one)."""
    span = _span.get()
    if span is None or not span.is_recording():
        return
    operation = OPERATIONS.get(record.route, record.route)
    span.update_name(f"{operation} {record.model.name}")
    usage = record.usage
    span.set_attributes(
        {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": record.model.name,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "switchboard.request_id": record.request_id,
            "switchboard.status": record.status,
            "switchboard.attempts": record.attempts,
            "switchboard.stream": record.is_stream,
        }
    )
    if record.ttft_ms is not None:
        span.set_attribute("gen_ai.server.time_to_first_token", record.ttft_ms / 1000)
        # When the first token went out: the request's start plus its time to it.
        at = time.time_ns() - (record.latency_ms - record.ttft_ms) * 1_000_000
        span.add_event("gen_ai.first_token", {"ttft_ms": record.ttft_ms}, timestamp=at)


def upstream_started(upstream, url: str, headers: dict[str, str]) -> Any:
    """A CLIENT span for one upstream attempt (its parent told upstream: traceparent)."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    parent = _span.get()
    context = trace.set_span_in_context(parent) if parent is not None else None
    if parent is not None:
        parent.set_attribute("gen_ai.response.model", upstream.upstream_model_id)
    parts = urlsplit(url)
    span = tracer.start_span(
        "POST",
        context=context,
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": "POST",
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
            "url.path": parts.path,
            "switchboard.upstream": upstream.name,
        },
    )
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return span


def upstream_ended(span, *, status: int | None, error: BaseException | None = None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None or (status is not None and status >= 500):
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
    span.end()
