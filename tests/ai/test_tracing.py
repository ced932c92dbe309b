"""OpenTelemetry spans of gateway requests, into the SDK's in-memory exporter."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ai.gateway import tracing
from tests.ai.conftest import make_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def spans():
    """Tracing on for the test, every ended span kept in memory."""
    exporter = InMemorySpanExporter()
    tracing.enable(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.disable()


def _finished(exporter, count: int, timeout: float = 5.0):
    """The ended spans once there are ``count`` (a stream's ends after its response)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(exporter.get_finished_spans()) >= count:
            time.sleep(0.05)  # a span ended twice, or one too many, shows up too
            return list(exporter.get_finished_spans())
        time.sleep(0.02)
    raise AssertionError(f"expected {count} spans, found {len(exporter.get_finished_spans())}")


def _post(world, **body):
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "acme-chat", "messages": HI, **body},
        timeout=10,
    )


def _pair(spans):
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    return server, client


def test_it_traces_a_request_with_the_genai_attributes_and_the_upstream_call(world, spans):
    reply = _post(world)
    assert reply.status_code == 200
    server, client = _pair(_finished(spans, 2))
    assert server.name == "chat acme-chat"
    attributes = server.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "acme-chat"
    assert attributes["gen_ai.response.model"] == "fake-chat"  # the upstream's model id
    usage = reply.json()["usage"]
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["switchboard.request_id"] == reply.headers["x-request-id"]
    # The upstream's HTTP call is a child of the request's span, in the same trace.
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["url.path"] == "/v1/chat/completions"
    assert server.start_time <= client.start_time <= client.end_time <= server.end_time


def test_a_stream_span_carries_the_time_to_first_token(world, spans):
    reply = _post(world, stream=True)
    assert reply.status_code == 200 and "[DONE]" in reply.text
    server, _ = _pair(_finished(spans, 2))
    ttft = server.attributes["gen_ai.server.time_to_first_token"]
    assert 0 <= ttft <= (server.end_time - server.start_time) / 1e9
    (event,) = [e for e in server.events if e.name == "gen_ai.first_token"]
    assert server.start_time <= event.timestamp <= server.end_time
    assert server.attributes["gen_ai.usage.output_tokens"] == 20
    assert server.attributes["switchboard.status"] == "ok"


def test_a_stream_span_ends_when_the_client_leaves_mid_stream(world, acme, fake_upstream, spans):
    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=100)])
    host, port = world.url.removeprefix("http://").split(":")
    body = b'{"model": "slow", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {world.alice_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(4096)
    (event,) = wait_for_usage(1)
    assert event.status == "client_cancelled"
    server, _ = _pair(_finished(spans, 2))
    assert server.attributes["switchboard.status"] == "client_cancelled"
    assert 1 <= server.attributes["gen_ai.usage.output_tokens"] < 20
    # It ended when the client left, not when the upstream's 20 chunks (2 s) would have.
    assert (server.end_time - server.start_time) / 1e9 < 1.9


def test_a_refused_request_has_a_span_with_its_status(world, spans):
    reply = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": "Bearer sb-not-a-key"},
        json={"model": "acme-chat", "messages": HI},
    )
    assert reply.status_code == 401
    (server,) = _finished(spans, 1)
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 401


def test_tracing_is_off_unless_configured(world, settings, monkeypatch):
    settings.OTEL_TRACES = False
    tracing.configure()
    assert tracing.tracer is None
    # Off, the request path makes no OpenTelemetry call at all.
    from opentelemetry import trace

    def refuse(*args, **kwargs):
        raise AssertionError("an OpenTelemetry call while tracing is off")

    monkeypatch.setattr(trace, "set_span_in_context", refuse)
    monkeypatch.setattr(tracing, "request_started", refuse)
    monkeypatch.setattr(tracing, "upstream_started", refuse)
    monkeypatch.setattr(tracing, "request_finished", refuse)
    assert _post(world).status_code == 200
    assert _post(world, stream=True).status_code == 200


def test_the_otlp_exporter_is_used_when_tracing_is_on(settings, monkeypatch):
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    made = []

    class Exporter(InMemorySpanExporter):
        def __init__(self, *args, **kwargs):
            super().__init__()
            made.append(self)

    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", Exporter)
    settings.OTEL_TRACES = True
    try:
        tracing.configure()
        assert tracing.tracer is not None and len(made) == 1
    finally:
        tracing.disable()


def test_an_otlp_endpoint_turns_tracing_on():
    def traces(**env) -> str:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "panel.settings", **env}
        for name in ("OTEL_TRACES", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            env.setdefault(name, "")
        code = "import django; django.setup(); from django.conf import settings; print(settings.OTEL_TRACES)"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        return done.stdout.strip()

    assert traces() == "False"
    assert traces(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318") == "True"
    assert traces(OTEL_TRACES="true") == "True"
    assert (
        traces(OTEL_TRACES="false", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318") == "False"
    )
