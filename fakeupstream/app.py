"""The aiohttp application: its routes, and the wrapper every ``/v1`` route runs through.

Routes live under ``/v1`` and, to let one server act as several upstreams, also under
``/f/<opts>/v1`` where ``<opts>`` is e.g. ``status=500,latency_ms=20`` (see ``faults``).
Each request is parsed, recorded, given its faults, then answered by its handler.
``/_fake/requests`` (GET, DELETE) and ``/_fake/health`` are the test hooks.
llama.cpp's own routes (``/completion``, ``/tokenize``...) are at the root (``llamacpp``).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fakeupstream import anthropic, faults, finetune, handlers, llamacpp, records, responses
from fakeupstream.wire import (
    BadRequest,
    anthropic_error_response,
    bad_request,
    error_response,
    json_response,
)

_PREFIXES = ("/v1", "/f/{fake_opts}/v1")

# method, path under a prefix, handler, needs a JSON body, can stream
_ROUTES = [
    ("GET", "/models", handlers.model_list, False, False),
    ("GET", "/models/{model_id}", handlers.model_get, False, False),
    ("POST", "/chat/completions", handlers.chat, True, True),
    ("POST", "/completions", handlers.completions, True, True),
    ("POST", "/embeddings", handlers.embeddings, True, False),
    ("POST", "/images/generations", handlers.images, True, False),
    ("GET", "/images/fake.png", handlers.image_file, False, False),
    ("POST", "/messages", anthropic.messages, True, True),
    ("POST", "/responses", responses.responses, True, True),
    ("POST", "/files", finetune.file_upload, False, False),
    ("GET", "/fine_tuning/jobs", finetune.job_list, False, False),
    ("POST", "/fine_tuning/jobs", finetune.job_create, True, False),
    ("GET", "/fine_tuning/jobs/{job_id}", finetune.job_get, False, False),
    ("POST", "/fine_tuning/jobs/{job_id}/cancel", finetune.job_cancel, False, False),
    ("GET", "/fine_tuning/jobs/{job_id}/events", finetune.job_events, False, False),
]
# The routes that answer errors in Anthropic's shape.
_ANTHROPIC_HANDLERS = frozenset({anthropic.messages})


def create_app(models: list[str] | None = None) -> web.Application:
    """The fake upstream application. ``models`` adds ids to ``GET /v1/models``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    handlers.setup(app, models)
    finetune.setup(app)
    records.setup(app)
    faults.setup(app)
    router = app.router
    for prefix in _PREFIXES:
        for method, path, handler, needs_body, can_stream in _ROUTES:
            errors = anthropic_error_response if handler in _ANTHROPIC_HANDLERS else error_response
            wrapped = _endpoint(
                handler, needs_body=needs_body, can_stream=can_stream, errors=errors
            )
            router.add_route(method, prefix + path, wrapped)
    router.add_get("/_fake/requests", _fake_requests)
    router.add_delete("/_fake/requests", _fake_clear)
    router.add_get("/_fake/health", _fake_health)
    llamacpp.add_routes(app)
    for prefix in _PREFIXES:
        router.add_route(
            "*", prefix + "/{tail:.*}", _endpoint(handlers.not_found, needs_body=False)
        )
    return app


def reset(app: web.Application) -> None:
    """Forget recorded requests and reset ``fail_first`` counters."""
    records.clear(app)
    faults.clear(app)


def _endpoint(
    handler: Any, *, needs_body: bool, can_stream: bool = False, errors: Any = error_response
) -> Any:
    """Wrap a route: parse, record, apply faults, then run ``handler``."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        body: Any = None
        if needs_body:
            raw = await request.read()
            body = _json_or_none(raw)
            entry = records.record(request, body, raw)
            if not isinstance(body, dict):
                return errors(
                    400,
                    "We could not parse the JSON body of your request. "
                    "(The body must be a JSON object.)",
                    type_="invalid_request_error",
                )
        else:
            entry = records.record(request, None, None)
        try:
            opts = faults.request_options(request, body)
            entry.faults = opts
            streams = can_stream and body.get("stream") is True
            injected = await faults.inject(request, opts, streams=streams, errors=errors)
            if injected is not None:
                return injected
            return await handler(request, body, opts)
        except BadRequest as exc:
            return bad_request(exc, errors)

    return endpoint


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _fake_requests(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": records.snapshot(request.app)})


async def _fake_clear(request: web.Request) -> web.Response:
    reset(request.app)
    return json_response({"ok": True})


async def _fake_health(request: web.Request) -> web.Response:
    return json_response({"ok": True})
