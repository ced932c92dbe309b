"""The OpenAI endpoints: what each ``/v1`` route answers once its faults have been applied.

Owns the model list, the response ids, and the bodies of chat and text completions (JSON
here, SSE in ``sse``), embeddings (deterministic unit vectors per input), image generations
(a 1x1 PNG) and the 404 for any other ``/v1`` path. Every handler takes
``(request, body, opts)`` and raises ``BadRequest`` for a field it cannot use.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import math
import os
import struct
import time
import zlib
from typing import Any

from aiohttp import web

from fakeupstream.plans import (
    Plan,
    item_tokens,
    message_words,
    model_of,
    optional_int,
    prompt_items,
)
from fakeupstream.sse import stream_completion
from fakeupstream.wire import BadRequest, dumps, error_response, json_response

DEFAULT_MODELS = ("fake-chat", "fake-embed", "fake-image")
DEFAULT_EMBED_DIMENSIONS = 8
OWNED_BY = "fake-upstream"

_BOOT = os.urandom(4).hex()
_CREATED = 1_700_000_000  # fixed "created" for the model list

_MODELS_BODY = web.AppKey("fake_models_body", bytes)
_MODEL_IDS = web.AppKey("fake_model_ids", tuple)
_IDS = web.AppKey("fake_ids", itertools.count)


def _make_png() -> bytes:
    """A valid 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\x00\x10\x80\xf0\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG_BYTES = _make_png()
PNG_B64 = base64.b64encode(PNG_BYTES).decode("ascii")


def setup(app: web.Application, models: list[str] | None) -> None:
    """Serve the default models plus ``models``, and start the response ids at 1."""
    ids = list(DEFAULT_MODELS)
    for model in models or ():
        if model and model not in ids:
            ids.append(model)
    app[_MODEL_IDS] = tuple(ids)
    app[_MODELS_BODY] = dumps(
        {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": _CREATED, "owned_by": OWNED_BY} for i in ids
            ],
        }
    )
    app[_IDS] = itertools.count(1)


def _next_id(request: web.Request, prefix: str) -> str:
    return f"{prefix}-{_BOOT}{next(request.app[_IDS]):08x}"


# --------------------------------------------------------------------------- completions


def _choices(kind: bytes, content: str, finish: str) -> bytes:
    if kind == b"chat.completion":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"text": content, "index": 0, "logprobs": None, "finish_reason": finish}
    return dumps([choice])


_cached_choices = functools.lru_cache(maxsize=512)(_choices)


def _tool_call_choices(plan: Plan) -> bytes:
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": plan.tool_calls}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
    return dumps([choice])


def _completion_response(kind: bytes, completion_id: str, created: int, plan: Plan) -> web.Response:
    """A non-streaming chat/text completion, assembled from cached fragments."""
    make = _choices if plan.pieces is None else _cached_choices
    parts = [
        b'{"id":"%s","object":"%s","created":%d,"model":' % (completion_id.encode(), kind, created),
        json.dumps(plan.model).encode("utf-8"),
        b',"choices":',
        _tool_call_choices(plan) if plan.tool_calls else make(kind, plan.content, plan.finish),
    ]
    if plan.usage is not None:
        parts.append(b',"usage":' + dumps(plan.usage))
    if plan.timings is not None:
        parts.append(b',"timings":' + dumps(plan.timings))
    parts.append(b"}")
    return web.Response(body=b"".join(parts), content_type="application/json")


async def _answer(
    request: web.Request, opts: dict[str, Any], plan: Plan, *, chat: bool
) -> web.StreamResponse:
    """Answer a planned completion as one JSON body, or as SSE when the client streams."""
    completion_id = _next_id(request, "chatcmpl" if chat else "cmpl")
    created = int(time.time())
    if plan.stream:
        return await stream_completion(
            request, opts, plan, chat=chat, completion_id=completion_id, created=created
        )
    kind = b"chat.completion" if chat else b"text_completion"
    return _completion_response(kind, completion_id, created, plan)


async def chat(request: web.Request, body: Any, opts: dict[str, Any]) -> web.StreamResponse:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "'messages' is a required property and must be a non-empty array", param="messages"
        )
    plan = Plan(body, opts, "fake-chat", message_words(messages))
    return await _answer(request, opts, plan, chat=True)


async def completions(request: web.Request, body: Any, opts: dict[str, Any]) -> web.StreamResponse:
    if "prompt" not in body:
        raise BadRequest("'prompt' is a required property", param="prompt")
    items = prompt_items(body["prompt"], "prompt")
    plan = Plan(body, opts, "fake-chat", sum(item_tokens(i) for i in items))
    return await _answer(request, opts, plan, chat=False)


# --------------------------------------------------------------------------- embeddings


@functools.lru_cache(maxsize=4096)
def _vector(key: str, dims: int) -> tuple[float, ...]:
    raw = hashlib.shake_256(key.encode("utf-8")).digest(2 * dims)
    values = [int.from_bytes(raw[2 * i : 2 * i + 2], "big") / 32767.5 - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(round(v / norm, 6) for v in values)


@functools.lru_cache(maxsize=4096)
def _vector_b64(key: str, dims: int) -> str:
    vec = _vector(key, dims)
    return base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode("ascii")


async def embeddings(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    if "input" not in body:
        raise BadRequest("'input' is a required property", param="input")
    items = prompt_items(body["input"], "input")
    model = model_of(body, "fake-embed")
    dims = optional_int(body, "dimensions", minimum=1) or DEFAULT_EMBED_DIMENSIONS
    if dims > 65536:
        raise BadRequest("'dimensions' is too large", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    make = _vector if encoding == "float" else _vector_b64
    data = []
    for index, item in enumerate(items):
        key = item if isinstance(item, str) else "tokens:" + ",".join(map(str, item))
        data.append({"object": "embedding", "index": index, "embedding": make(key, dims)})
    result: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not opts.get("no_usage"):
        n = max(1, sum(item_tokens(i) for i in items))
        result["usage"] = {"prompt_tokens": n, "total_tokens": n}
    return json_response(result)


# --------------------------------------------------------------------------- images, models


async def images(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' is a required property and must be a string", param="prompt")
    n = optional_int(body, "n", minimum=1) or 1
    if n > 16:
        raise BadRequest("'n' must be <= 16", param="n")
    fmt = body.get("response_format") or "b64_json"
    if fmt == "url":
        item = {"url": f"http://{request.host}/v1/images/fake.png"}
    elif fmt == "b64_json":
        item = {"b64_json": PNG_B64}
    else:
        raise BadRequest("'response_format' must be 'url' or 'b64_json'", param="response_format")
    return json_response({"created": int(time.time()), "data": [dict(item) for _ in range(n)]})


async def image_file(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    return web.Response(body=PNG_BYTES, content_type="image/png")


async def model_list(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    return web.Response(body=request.app[_MODELS_BODY], content_type="application/json")


async def model_get(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    model_id = request.match_info["model_id"]
    if model_id not in request.app[_MODEL_IDS]:
        return error_response(
            404,
            f"The model '{model_id}' does not exist",
            type_="invalid_request_error",
            param="model",
            code="model_not_found",
        )
    return json_response(
        {"id": model_id, "object": "model", "created": _CREATED, "owned_by": OWNED_BY}
    )


async def not_found(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    return error_response(
        404, f"Unknown route: {request.method} {request.path}", code="unknown_url"
    )
