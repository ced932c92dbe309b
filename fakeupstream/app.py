"""A fast, deterministic, OpenAI-compatible fake upstream for tests, demos and benchmarks.

Pure aiohttp, no Django. Routes live under ``/v1`` and, to let one server act as several
upstreams, also under ``/f/<opts>/v1`` where ``<opts>`` is e.g. ``status=500,latency_ms=20``.

Fault options (per upstream via the path, per request via ``X-Fake-<Option>`` headers or a
``"fake_upstream": {...}`` body key; precedence body > header > path):

``latency_ms``      delay before the response starts (before headers are sent)
``ttft_ms``         SSE: delay after the headers, before the first chunk
``chunk_delay_ms``  SSE: delay between consecutive chunks
``status``          answer with this HTTP status and an OpenAI error envelope
``drop_after``      SSE: close the connection after this many content chunks (no ``[DONE]``);
                    JSON: close the connection without any response
``no_usage``        never send a ``usage`` block
``tokens``          completion length in tokens (default 20); token ``i`` is ``f"tok{i} "``
``echo``            the reply content is ``json.dumps(received_body, sort_keys=True)``
``fail_first``      answer ``status`` (default 500) only for the first K requests carrying this
                    exact option set, then normally

Run: ``python -m fakeupstream --host 127.0.0.1 --port 9100 [--models a,b]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import signal
import struct
import sys
import threading
import time
import zlib
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TOKENS",
    "OPTION_NAMES",
    "PNG_BYTES",
    "FakeUpstreamThread",
    "auth_fingerprint",
    "create_app",
    "format_faults",
    "main",
]

DEFAULT_MODELS = ("fake-chat", "fake-embed", "fake-image")
DEFAULT_TOKENS = 20
DEFAULT_EMBED_DIMENSIONS = 8
MAX_RECORDED = 100
OWNED_BY = "fake-upstream"

OPTION_TYPES: dict[str, type] = {
    "latency_ms": float,
    "ttft_ms": float,
    "chunk_delay_ms": float,
    "status": int,
    "drop_after": int,
    "no_usage": bool,
    "tokens": int,
    "echo": bool,
    "fail_first": int,
}
OPTION_NAMES = tuple(OPTION_TYPES)
_HEADER_TO_OPTION = {"x-fake-" + name.replace("_", "-"): name for name in OPTION_NAMES}
_SENSITIVE_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

_BOOT = os.urandom(4).hex()
_CREATED = 1_700_000_000  # fixed "created" for the model list


# --------------------------------------------------------------------------- helpers


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


def auth_fingerprint(value: str) -> str:
    """The sha256 prefix recorded for a credential (use it to compare in tests)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def _auth_record(value: str | None) -> dict[str, Any]:
    if value is None:
        return {"present": False, "scheme": None, "sha256_prefix": None}
    scheme, _, credential = value.partition(" ")
    if not credential:
        scheme, credential = "", value
    return {
        "present": True,
        "scheme": scheme or None,
        # fingerprint of the credential (after "Bearer "), and of the whole header value
        "sha256_prefix": auth_fingerprint(credential.strip()),
        "value_sha256_prefix": auth_fingerprint(value),
    }


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def _error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    default_type, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    body = {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return web.Response(status=status, body=_dumps(body), content_type="application/json")


def _bad_request(exc: _BadRequest) -> web.Response:
    return _error_response(
        400, exc.message, type_="invalid_request_error", param=exc.param, code=exc.code
    )


# --------------------------------------------------------------------------- options


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise _BadRequest(
            f"unknown fake upstream option {name!r} (from {source}); "
            f"known: {', '.join(OPTION_NAMES)}",
            param="fake_upstream",
        )
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float):
                return bool(value)
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if isinstance(value, bool):
            raise ValueError(value)
        number = kind(value.strip() if isinstance(value, str) else value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(value)
        if number < 0:
            raise ValueError(value)
        if name == "status" and not 100 <= number <= 599:
            raise ValueError(value)
        return number
    except (TypeError, ValueError):
        raise _BadRequest(
            f"invalid value {value!r} for fake upstream option {name!r} (from {source})",
            param=f"fake_upstream.{name}",
        ) from None


@functools.lru_cache(maxsize=1024)
def _parse_path_options(text: str) -> tuple[tuple[str, Any], ...]:
    opts: dict[str, Any] = {}
    for part in text.split(","):
        part = part.strip()
        if not part or part == "-":
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not sep:
            value = "1"  # bare flag: "echo" == "echo=1"
        opts[name] = _coerce(name, value, "path")
    return tuple(opts.items())


def format_faults(**faults: Any) -> str:
    """``format_faults(status=500, echo=True)`` -> ``"status=500,echo=1"``."""
    parts = []
    for name, value in faults.items():
        if name not in OPTION_TYPES:
            raise ValueError(f"unknown fake upstream option {name!r}")
        if value is None or value is False:
            continue
        if value is True:
            value = 1
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{name}={value}")
    return ",".join(parts)


def _request_options(request: web.Request, body: Any) -> dict[str, Any]:
    path_opts = request.match_info.get("fake_opts")
    opts: dict[str, Any] = dict(_parse_path_options(path_opts)) if path_opts else {}
    headers = request.headers
    for header, name in _HEADER_TO_OPTION.items():
        value = headers.get(header)
        if value is not None:
            opts[name] = _coerce(name, value, "header")
    if isinstance(body, dict):
        body_opts = body.get("fake_upstream")
        if body_opts is not None:
            if not isinstance(body_opts, dict):
                raise _BadRequest("'fake_upstream' must be an object", param="fake_upstream")
            for name, value in body_opts.items():
                opts[name] = _coerce(name, value, "body")
    return opts


# --------------------------------------------------------------------------- app state

_RECORDS = web.AppKey("fake_records", collections.deque)
_FAIL_COUNTS = web.AppKey("fake_fail_counts", dict)
_MODELS_BODY = web.AppKey("fake_models_body", bytes)
_MODEL_IDS = web.AppKey("fake_model_ids", tuple)
_IDS = web.AppKey("fake_ids", itertools.count)


def _next_id(request: web.Request, prefix: str) -> str:
    return f"{prefix}-{_BOOT}{next(request.app[_IDS]):08x}"


class _Record:
    """A received request; rendered to JSON only when ``/_fake/requests`` is read."""

    __slots__ = ("time", "method", "path", "query", "headers", "body", "raw", "faults")

    def __init__(self, request: web.Request, body: Any, raw: bytes | None) -> None:
        self.time = time.time()
        self.method = request.method
        self.path = request.path
        self.query = request.query_string
        self.headers = request.headers  # immutable proxy: cheap to keep
        self.body = body
        self.raw = raw if body is None and raw else None
        self.faults: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        headers = {}
        auth = None
        for key, value in self.headers.items():
            lowered = key.lower()
            if lowered == "authorization":
                auth = value
            elif lowered in _SENSITIVE_HEADERS:
                headers[key] = "sha256:" + auth_fingerprint(value)
            else:
                headers[key] = value
        entry: dict[str, Any] = {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "authorization": _auth_record(auth),
            "json": self.body,
            "faults": self.faults,
        }
        if self.raw is not None:
            entry["raw_body"] = self.raw[:4096].decode("utf-8", "replace")
        return entry


def _record(request: web.Request, body: Any, raw: bytes | None) -> _Record:
    entry = _Record(request, body, raw)
    request.app[_RECORDS].append(entry)
    return entry


# --------------------------------------------------------------------------- content

_TOKEN_CACHE: list[str] = []


def _tokens(n: int) -> list[str]:
    while len(_TOKEN_CACHE) < n:
        _TOKEN_CACHE.append(f"tok{len(_TOKEN_CACHE)} ")
    return _TOKEN_CACHE[:n]


@functools.lru_cache(maxsize=256)
def _content(n: int) -> str:
    return "".join(_tokens(n))


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _message_words(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += _words(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                    total += _words(part.get("text"))
                elif isinstance(part, str):
                    total += _words(part)
    return total


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    )


def _prompt_items(value: Any, field: str) -> list[str | list[int]]:
    """Normalise a ``prompt``/``input``: string, list of strings, token array(s)."""
    if isinstance(value, str):
        return [value]
    if _is_token_array(value):
        return [value]
    if isinstance(value, list) and value:
        items: list[str | list[int]] = []
        for item in value:
            if isinstance(item, str) or _is_token_array(item):
                items.append(item)
            else:
                raise _BadRequest(
                    f"'{field}' items must be strings or arrays of integers", param=field
                )
        return items
    raise _BadRequest(
        f"'{field}' must be a string, an array of strings or an array of token arrays",
        param=field,
    )


def _item_tokens(item: str | list[int]) -> int:
    return _words(item) if isinstance(item, str) else len(item)


def _model_of(body: dict[str, Any], default: str) -> str:
    model = body.get("model")
    if model is None:
        return default
    if not isinstance(model, str):
        raise _BadRequest("'model' must be a string", param="model")
    return model


def _optional_int(body: dict[str, Any], field: str, minimum: int = 0) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _BadRequest(f"'{field}' must be an integer >= {minimum}", param=field)
    return value


class _Plan:
    """What to answer for a chat/completions request."""

    __slots__ = (
        "model",
        "pieces",
        "content",
        "finish",
        "usage",
        "stream",
        "include_usage",
    )

    def __init__(self, body: dict[str, Any], opts: dict[str, Any], default_model: str, words: int):
        self.model = _model_of(body, default_model)
        cap = _optional_int(body, "max_completion_tokens")
        if cap is None:
            cap = _optional_int(body, "max_tokens")
        self.finish = "stop"
        if opts.get("echo"):
            self.content = json.dumps(body, sort_keys=True)
            self.pieces: list[str] | None = None
            completion_tokens = max(1, len(self.content.split()))
        else:
            n = opts.get("tokens", DEFAULT_TOKENS)
            if cap is not None and cap < n:
                n = cap
                self.finish = "length"
            self.pieces = _tokens(n)
            self.content = _content(n)
            completion_tokens = n
        prompt_tokens = max(1, words)
        self.usage = (
            None
            if opts.get("no_usage")
            else {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        )
        self.stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        self.include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )


# Precomputed SSE fragments. A chunk is ``prefix + suffix`` where the per-request prefix is
# ``data: {"id":...,"object":...,"created":...,"model":...,`` and the suffix holds choices.
_CHAT_ROLE = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)
_CHAT_FINISH = {
    reason: b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}]}\n\n'
    % reason.encode()
    for reason in ("stop", "length")
}
_TEXT_FINISH = {
    reason: b'"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"%s"}]}\n\n'
    % reason.encode()
    for reason in ("stop", "length")
}
_DONE = b"data: [DONE]\n\n"


def _chat_piece(text: str) -> bytes:
    return (
        b'"choices":[{"index":0,"delta":{"content":'
        + json.dumps(text).encode("utf-8")
        + b'},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def _text_piece(text: str) -> bytes:
    return (
        b'"choices":[{"text":'
        + json.dumps(text).encode("utf-8")
        + b',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'
    )


_CHAT_PIECES: list[bytes] = []
_TEXT_PIECES: list[bytes] = []


def _piece_suffixes(cache: list[bytes], make: Any, n: int) -> list[bytes]:
    if len(cache) < n:
        for token in _tokens(n)[len(cache) :]:
            cache.append(make(token))
    return cache[:n]


def _usage_suffix(usage: dict[str, int]) -> bytes:
    return b'"choices":[],"usage":' + _dumps(usage) + b"}\n\n"


def _sse_events(plan: _Plan, chat: bool, prefix: bytes) -> tuple[list[bytes], int]:
    """All SSE events for a plan, and how many of them (after the first) are content."""
    events: list[bytes] = []
    if chat:
        events.append(prefix + _CHAT_ROLE)
    if plan.pieces is None:
        contents = [prefix + (_chat_piece if chat else _text_piece)(plan.content)]
    else:
        cache, make = (_CHAT_PIECES, _chat_piece) if chat else (_TEXT_PIECES, _text_piece)
        contents = [prefix + s for s in _piece_suffixes(cache, make, len(plan.pieces))]
    events.extend(contents)
    events.append(prefix + (_CHAT_FINISH if chat else _TEXT_FINISH)[plan.finish])
    if plan.include_usage and plan.usage is not None:
        events.append(prefix + _usage_suffix(plan.usage))
    events.append(_DONE)
    return events, len(contents)


# --------------------------------------------------------------------------- responses


def _close_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class _CoalescedStreamResponse(web.StreamResponse):
    """A StreamResponse whose headers are sent with the first body write (aiohttp >= 3.11)."""

    _send_headers_immediately = False


async def _stream(
    request: web.Request, opts: dict[str, Any], events: list[bytes], n_lead: int, n_content: int
) -> web.StreamResponse:
    """Send SSE events, honouring ttft_ms / chunk_delay_ms / drop_after."""
    drop_after = opts.get("drop_after")
    if drop_after is not None:
        events = events[: n_lead + min(drop_after, n_content)]
    ttft = opts.get("ttft_ms", 0) / 1000
    delay = opts.get("chunk_delay_ms", 0) / 1000
    # With no ttft the headers may ride along with the first chunk (one send instead of two).
    coalesce = ttft <= 0 and bool(events)
    resp = (_CoalescedStreamResponse if coalesce else web.StreamResponse)(headers=_SSE_HEADERS)
    try:
        await resp.prepare(request)
        if ttft > 0:
            await asyncio.sleep(ttft)
        if delay <= 0:
            if events:
                await resp.write(b"".join(events))
        else:
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(delay)
                await resp.write(event)
        if drop_after is not None:
            _close_connection(request)
            return resp
        await resp.write_eof()
    except ConnectionError:  # client went away (ClientConnectionResetError included)
        _close_connection(request)
    return resp


def _json(obj: Any) -> web.Response:
    return web.Response(body=_dumps(obj), content_type="application/json")


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
    return _dumps([choice])


_cached_choices = functools.lru_cache(maxsize=512)(_choices)


def _completion_response(
    kind: bytes, completion_id: str, created: int, plan: _Plan
) -> web.Response:
    """A non-streaming chat/text completion, assembled from cached fragments."""
    make = _choices if plan.pieces is None else _cached_choices
    parts = [
        b'{"id":"%s","object":"%s","created":%d,"model":' % (completion_id.encode(), kind, created),
        json.dumps(plan.model).encode("utf-8"),
        b',"choices":',
        make(kind, plan.content, plan.finish),
    ]
    if plan.usage is not None:
        parts.append(
            b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}'
            % (
                plan.usage["prompt_tokens"],
                plan.usage["completion_tokens"],
                plan.usage["total_tokens"],
            )
        )
    parts.append(b"}")
    return web.Response(body=b"".join(parts), content_type="application/json")


async def _chat(request: web.Request, body: Any, opts: dict[str, Any]) -> web.StreamResponse:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(
            "'messages' is a required property and must be a non-empty array", param="messages"
        )
    plan = _Plan(body, opts, "fake-chat", _message_words(messages))
    completion_id = _next_id(request, "chatcmpl")
    created = int(time.time())
    if plan.stream:
        prefix = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":'
            % (completion_id.encode(), created)
            + json.dumps(plan.model).encode("utf-8")
            + b","
        )
        events, n_content = _sse_events(plan, True, prefix)
        return await _stream(request, opts, events, 1, n_content)
    return _completion_response(b"chat.completion", completion_id, created, plan)


async def _completions(request: web.Request, body: Any, opts: dict[str, Any]) -> web.StreamResponse:
    if "prompt" not in body:
        raise _BadRequest("'prompt' is a required property", param="prompt")
    items = _prompt_items(body["prompt"], "prompt")
    plan = _Plan(body, opts, "fake-chat", sum(_item_tokens(i) for i in items))
    completion_id = _next_id(request, "cmpl")
    created = int(time.time())
    if plan.stream:
        prefix = (
            b'data: {"id":"%s","object":"text_completion","created":%d,"model":'
            % (completion_id.encode(), created)
            + json.dumps(plan.model).encode("utf-8")
            + b","
        )
        events, n_content = _sse_events(plan, False, prefix)
        return await _stream(request, opts, events, 0, n_content)
    return _completion_response(b"text_completion", completion_id, created, plan)


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


async def _embeddings(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    if "input" not in body:
        raise _BadRequest("'input' is a required property", param="input")
    items = _prompt_items(body["input"], "input")
    model = _model_of(body, "fake-embed")
    dims = _optional_int(body, "dimensions", minimum=1) or DEFAULT_EMBED_DIMENSIONS
    if dims > 65536:
        raise _BadRequest("'dimensions' is too large", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    make = _vector if encoding == "float" else _vector_b64
    data = []
    for index, item in enumerate(items):
        key = item if isinstance(item, str) else "tokens:" + ",".join(map(str, item))
        data.append({"object": "embedding", "index": index, "embedding": make(key, dims)})
    result: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not opts.get("no_usage"):
        n = max(1, sum(_item_tokens(i) for i in items))
        result["usage"] = {"prompt_tokens": n, "total_tokens": n}
    return _json(result)


async def _images(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _BadRequest("'prompt' is a required property and must be a string", param="prompt")
    n = _optional_int(body, "n", minimum=1) or 1
    if n > 16:
        raise _BadRequest("'n' must be <= 16", param="n")
    fmt = body.get("response_format") or "b64_json"
    if fmt == "url":
        item = {"url": f"http://{request.host}/v1/images/fake.png"}
    elif fmt == "b64_json":
        item = {"b64_json": PNG_B64}
    else:
        raise _BadRequest("'response_format' must be 'url' or 'b64_json'", param="response_format")
    return _json({"created": int(time.time()), "data": [dict(item) for _ in range(n)]})


async def _image_file(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    return web.Response(body=PNG_BYTES, content_type="image/png")


async def _models(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    return web.Response(body=request.app[_MODELS_BODY], content_type="application/json")


async def _model(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    model_id = request.match_info["model_id"]
    if model_id not in request.app[_MODEL_IDS]:
        return _error_response(
            404,
            f"The model '{model_id}' does not exist",
            type_="invalid_request_error",
            param="model",
            code="model_not_found",
        )
    return _json({"id": model_id, "object": "model", "created": _CREATED, "owned_by": OWNED_BY})


async def _not_found(request: web.Request, body: Any, opts: dict[str, Any]) -> web.Response:
    return _error_response(
        404, f"Unknown route: {request.method} {request.path}", code="unknown_url"
    )


def _endpoint(handler: Any, *, needs_body: bool, can_stream: bool = False) -> Any:
    """Wrap a route: parse, record, apply faults, then run ``handler``."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        body: Any = None
        raw: bytes | None = None
        if needs_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            entry = _record(request, body, raw)
            if not isinstance(body, dict):
                return _error_response(
                    400,
                    "We could not parse the JSON body of your request. "
                    "(The body must be a JSON object.)",
                    type_="invalid_request_error",
                )
        else:
            entry = _record(request, None, None)
        try:
            opts = _request_options(request, body)
            entry.faults = opts
            latency = opts.get("latency_ms")
            if latency:
                await asyncio.sleep(latency / 1000)
            status = opts.get("status")
            fail_first = opts.get("fail_first")
            if fail_first is not None:
                counts = request.app[_FAIL_COUNTS]
                key = tuple(sorted(opts.items()))
                seen = counts.get(key, 0)
                counts[key] = seen + 1
                if seen < fail_first:
                    status = status if status and status >= 400 else 500
                    return _error_response(
                        status, f"fake upstream: injected failure {seen + 1}/{fail_first}"
                    )
            elif status is not None and status >= 400:
                return _error_response(status, f"fake upstream: injected error (status {status})")
            if opts.get("drop_after") is not None and not (
                can_stream and body.get("stream") is True
            ):
                _close_connection(request)  # JSON: close without any response
                return web.Response()
            return await handler(request, body, opts)
        except _BadRequest as exc:
            return _bad_request(exc)

    return endpoint


async def _fake_requests(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [r.as_dict() for r in request.app[_RECORDS]]})


async def _fake_clear(request: web.Request) -> web.Response:
    request.app[_RECORDS].clear()
    request.app[_FAIL_COUNTS].clear()
    return _json({"ok": True})


async def _fake_health(request: web.Request) -> web.Response:
    return _json({"ok": True})


def create_app(models: list[str] | None = None) -> web.Application:
    """The fake upstream application. ``models`` adds ids to ``GET /v1/models``."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    ids = list(DEFAULT_MODELS)
    for model in models or ():
        if model and model not in ids:
            ids.append(model)
    app[_MODEL_IDS] = tuple(ids)
    app[_MODELS_BODY] = _dumps(
        {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": _CREATED, "owned_by": OWNED_BY} for i in ids
            ],
        }
    )
    app[_RECORDS] = collections.deque(maxlen=MAX_RECORDED)
    app[_FAIL_COUNTS] = {}
    app[_IDS] = itertools.count(1)

    routes = [
        ("GET", "/models", _models, False, False),
        ("GET", "/models/{model_id}", _model, False, False),
        ("POST", "/chat/completions", _chat, True, True),
        ("POST", "/completions", _completions, True, True),
        ("POST", "/embeddings", _embeddings, True, False),
        ("POST", "/images/generations", _images, True, False),
        ("GET", "/images/fake.png", _image_file, False, False),
    ]
    router = app.router
    for prefix in ("/v1", "/f/{fake_opts}/v1"):
        for method, path, handler, needs_body, can_stream in routes:
            wrapped = _endpoint(handler, needs_body=needs_body, can_stream=can_stream)
            router.add_route(method, prefix + path, wrapped)
    router.add_get("/_fake/requests", _fake_requests)
    router.add_delete("/_fake/requests", _fake_clear)
    router.add_get("/_fake/health", _fake_health)
    for prefix in ("/v1", "/f/{fake_opts}/v1"):
        router.add_route("*", prefix + "/{tail:.*}", _endpoint(_not_found, needs_body=False))
    return app


# --------------------------------------------------------------------------- running


async def _start_site(
    app: web.Application, host: str, port: int, shutdown_timeout: float
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    return runner, bound_port


class FakeUpstreamThread:
    """Run the fake upstream on its own event loop in a daemon thread.

    >>> with FakeUpstreamThread() as fake:
    ...     base = fake.base_url(status=503)  # http://127.0.0.1:PORT/f/status=503/v1
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
        shutdown_timeout: float = 0.25,
    ) -> None:
        self.host = host
        self.port = port
        self.models = models
        self.shutdown_timeout = shutdown_timeout
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, **faults: Any) -> str:
        """``http://HOST:PORT/v1``, or ``http://HOST:PORT/f/<opts>/v1`` with faults."""
        opts = format_faults(**faults)
        return f"{self.url}/f/{opts}/v1" if opts else f"{self.url}/v1"

    def start(self) -> FakeUpstreamThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("fake upstream failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        runner = None
        try:
            self.app = create_app(self.models)
            runner, self.port = loop.run_until_complete(
                _start_site(self.app, self.host, self.port, self.shutdown_timeout)
            )
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        assert self._loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of the recorded requests (oldest first, at most 100)."""
        return self._call(lambda: [r.as_dict() for r in self.app[_RECORDS]])

    def clear(self) -> None:
        """Forget recorded requests and reset ``fail_first`` counters."""

        def clear() -> None:
            self.app[_RECORDS].clear()
            self.app[_FAIL_COUNTS].clear()

        self._call(clear)

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeUpstreamThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(host: str, port: int, models: list[str]) -> None:
    runner, bound = await _start_site(create_app(models), host, port, shutdown_timeout=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible fake upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--models", default="", help="extra model ids, comma separated")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, models))
    sys.stdout.flush()
