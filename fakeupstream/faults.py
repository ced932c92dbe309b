"""Fault injection: which faults a request asks for, and those that act before any handler.

Fault options (per upstream via the path, per request via ``X-Fake-<Option>`` headers or a
``"fake_upstream": {...}`` body key; precedence body > header > path):

``latency_ms``      delay before the response starts (before headers are sent)
``ttft_ms``         SSE: delay after the headers, before the first chunk
``chunk_delay_ms``  SSE: delay between consecutive chunks
``status``          answer with this HTTP status and an OpenAI error envelope (Anthropic's
                    error on ``/v1/messages``); a 3xx is a redirect to ``REDIRECT_TO``
``drop_after``      SSE: close the connection after this many content chunks (no ``[DONE]``);
                    JSON: close the connection without any response
``no_usage``        never send a ``usage`` block
``tokens``          completion length in tokens (default 20); token ``i`` is ``f"tok{i} "``
``echo``            the reply content is ``json.dumps(received_body, sort_keys=True)``
``stall_after``     SSE: after this many content chunks, send nothing for ``stall_ms``
``stall_ms``        SSE: how long ``stall_after`` stalls (default 60000), then the rest follows
``linger_ms``       SSE: keep the connection open this long after ``[DONE]`` (as servers that
                    send pings or close lazily do)
``fail_first``      answer ``status`` (default 500) only for the first K requests carrying this
                    exact option set, then normally
``prompt_tokens``   the usage block's prompt count (default: the prompt's words)
``cached_tokens``   add ``prompt_tokens_details.cached_tokens`` (prompt caching, OpenAI's way)
``cache_write_tokens``  add ``prompt_tokens_details.cache_write_tokens`` (as OpenRouter does)
``reasoning_tokens``  add ``completion_tokens_details.reasoning_tokens``
``cache_n``         add llama.cpp's ``timings`` with this ``cache_n`` (prompt tokens its cache
                    reused) beside the usage block (a stream: on its finishing chunk)
``anthropic_usage`` send the usage block in Anthropic's shape: ``input_tokens`` (the prompt
                    less the cache's), ``output_tokens``, ``cache_read_input_tokens`` (the
                    ``cached_tokens``), ``cache_creation_input_tokens`` (``cache_write_tokens``)
``tool_calls``      a chat reply that calls this many of the request's tools (in turn; their
                    arguments are ``{"call": i}``) instead of answering in text
``ft_polls``        fine-tuning: polls of a running job before it ends (default 2)
``ft_fail``         fine-tuning: the job fails at its end instead of succeeding

This module owns the option table, its parsing and the ``fail_first`` counters. The
streaming faults (``ttft_ms``, ``chunk_delay_ms``, SSE ``drop_after``, ``stall_after``,
``linger_ms``) act in ``sse``; the content ones (``tokens``, ``echo``, ``no_usage``, the
usage counts, ``tool_calls``) in ``plans`` and ``handlers``.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any

from aiohttp import web

from fakeupstream.wire import BadRequest, close_connection, error_response

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
    "linger_ms": float,
    "stall_after": int,
    "stall_ms": float,
    "tool_calls": int,
    "prompt_tokens": int,
    "cached_tokens": int,
    "cache_write_tokens": int,
    "reasoning_tokens": int,
    "cache_n": int,
    "anthropic_usage": bool,
    "ft_polls": int,
    "ft_fail": bool,
}
OPTION_NAMES = tuple(OPTION_TYPES)
_HEADER_TO_OPTION = {"x-fake-" + name.replace("_", "-"): name for name in OPTION_NAMES}
# Where a 3xx ``status`` sends the client: a name that never resolves (RFC 2606).
REDIRECT_TO = "https://moved.invalid/v1/chat/completions"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

_FAIL_COUNTS = web.AppKey("fake_fail_counts", dict)


# --------------------------------------------------------------------------- options


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise BadRequest(
            f"unknown fake upstream option {name!r} (from {source}); "
            f"known: {', '.join(OPTION_NAMES)}",
            param="fake_upstream",
        )
    try:
        return _coerce_bool(value) if kind is bool else _coerce_number(name, kind, value)
    except (TypeError, ValueError):
        raise BadRequest(
            f"invalid value {value!r} for fake upstream option {name!r} (from {source})",
            param=f"fake_upstream.{name}",
        ) from None


def _coerce_bool(value: Any) -> bool:
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


def _coerce_number(name: str, kind: type, value: Any) -> int | float:
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


def request_options(request: web.Request, body: Any) -> dict[str, Any]:
    """The faults a request asks for: its path's, overridden by headers, then by the body."""
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
                raise BadRequest("'fake_upstream' must be an object", param="fake_upstream")
            for name, value in body_opts.items():
                opts[name] = _coerce(name, value, "body")
    return opts


# --------------------------------------------------------------------------- injection


def setup(app: web.Application) -> None:
    app[_FAIL_COUNTS] = {}


def clear(app: web.Application) -> None:
    """Reset the ``fail_first`` counters."""
    app[_FAIL_COUNTS].clear()


async def inject(
    request: web.Request, opts: dict[str, Any], *, streams: bool, errors: Any = error_response
) -> web.StreamResponse | None:
    """Apply ``latency_ms``, ``status``/``fail_first`` and a JSON ``drop_after``.

    Returns the response that replaces the handler's, or None to let the handler answer.
    """
    latency = opts.get("latency_ms")
    if latency:
        await asyncio.sleep(latency / 1000)
    failure = _injected_failure(request.app, opts, errors)
    if failure is not None:
        return failure
    if opts.get("drop_after") is not None and not streams:
        close_connection(request)  # JSON: close without any response
        return web.Response()
    return None


def _injected_failure(
    app: web.Application, opts: dict[str, Any], errors: Any
) -> web.Response | None:
    status = opts.get("status")
    fail_first = opts.get("fail_first")
    if fail_first is None:
        if status is not None and status >= 400:
            return errors(status, f"fake upstream: injected error (status {status})")
        if status is not None and 300 <= status < 400:
            return web.Response(status=status, headers={"Location": REDIRECT_TO})
        return None
    counts = app[_FAIL_COUNTS]
    key = tuple(sorted(opts.items()))
    seen = counts.get(key, 0)
    counts[key] = seen + 1
    if seen >= fail_first:
        return None
    status = status if status and status >= 400 else 500
    return errors(status, f"fake upstream: injected failure {seen + 1}/{fail_first}")
