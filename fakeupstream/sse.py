"""Streaming: a planned completion sent as server-sent events, with the streaming faults.

Owns the SSE chunk bytes (precomputed fragments, cached per token) and their timing:
``ttft_ms``, ``chunk_delay_ms`` and ``drop_after`` (close after that many content chunks,
with no ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from fakeupstream.plans import Plan, tokens
from fakeupstream.wire import close_connection, dumps

# Precomputed SSE fragments. A chunk is ``prefix + suffix`` where the per-request prefix is
# ``data: {"id":...,"object":...,"created":...,"model":...,`` and the suffix holds choices.
_CHAT_ROLE = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)
_CHAT_FINISH = {
    reason: b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}]}\n\n'
    % reason.encode()
    for reason in ("stop", "length", "tool_calls")
}
_TEXT_FINISH = {
    reason: b'"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"%s"}]}\n\n'
    % reason.encode()
    for reason in ("stop", "length")
}
_DONE = b"data: [DONE]\n\n"

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _chat_piece(text: str) -> bytes:
    return (
        b'"choices":[{"index":0,"delta":{"content":'
        + json.dumps(text).encode("utf-8")
        + b'},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def _tool_call_pieces(calls: list[dict[str, Any]]) -> list[bytes]:
    """Each call as OpenAI streams it: its id and name, then its arguments in two halves."""
    pieces = []
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        first = {**call, "index": index, "function": {**call["function"], "arguments": ""}}
        deltas = [first] + [
            {"index": index, "function": {"arguments": part}}
            for part in (arguments[:half], arguments[half:])
        ]
        for delta in deltas:
            choice = {"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}
            pieces.append(b'"choices":' + dumps([choice]) + b"}\n\n")
    return pieces


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
        for token in tokens(n)[len(cache) :]:
            cache.append(make(token))
    return cache[:n]


def _usage_suffix(usage: dict[str, int]) -> bytes:
    return b'"choices":[],"usage":' + dumps(usage) + b"}\n\n"


def _prefix(kind: bytes, completion_id: str, created: int, model: str) -> bytes:
    return (
        b'data: {"id":"%s","object":"%s","created":%d,"model":'
        % (completion_id.encode(), kind, created)
        + json.dumps(model).encode("utf-8")
        + b","
    )


def _sse_events(plan: Plan, chat: bool, prefix: bytes) -> tuple[list[bytes], int]:
    """All SSE events for a plan, and how many of them (after the first) are content."""
    events: list[bytes] = []
    if chat:
        events.append(prefix + _CHAT_ROLE)
    if plan.tool_calls and chat:
        contents = [prefix + piece for piece in _tool_call_pieces(plan.tool_calls)]
    elif plan.pieces is None:
        contents = [prefix + (_chat_piece if chat else _text_piece)(plan.content)]
    else:
        cache, make = (_CHAT_PIECES, _chat_piece) if chat else (_TEXT_PIECES, _text_piece)
        contents = [prefix + s for s in _piece_suffixes(cache, make, len(plan.pieces))]
    events.extend(contents)
    finish = (_CHAT_FINISH if chat else _TEXT_FINISH)[plan.finish]
    if plan.timings is not None:  # llama-server's, on its finishing chunk
        finish = b'"timings":' + dumps(plan.timings) + b"," + finish
    events.append(prefix + finish)
    if plan.include_usage and plan.usage is not None:
        events.append(prefix + _usage_suffix(plan.usage))
    events.append(_DONE)
    return events, len(contents)


async def stream_completion(
    request: web.Request,
    opts: dict[str, Any],
    plan: Plan,
    *,
    chat: bool,
    completion_id: str,
    created: int,
) -> web.StreamResponse:
    """Stream a chat (``chat.completion.chunk``) or text (``text_completion``) completion."""
    kind = b"chat.completion.chunk" if chat else b"text_completion"
    events, n_content = _sse_events(plan, chat, _prefix(kind, completion_id, created, plan.model))
    # A chat stream leads with one role chunk before the content.
    return await _stream(request, opts, events, 1 if chat else 0, n_content)


class _CoalescedStreamResponse(web.StreamResponse):
    """A StreamResponse whose headers are sent with the first body write (aiohttp >= 3.11)."""

    _send_headers_immediately = False


async def _stream(
    request: web.Request, opts: dict[str, Any], events: list[bytes], n_lead: int, n_content: int
) -> web.StreamResponse:
    """Send SSE events, honouring ttft_ms / chunk_delay_ms / drop_after / stall_after / linger_ms."""
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
        stall_after = opts.get("stall_after")
        stall_at = None if stall_after is None else n_lead + min(stall_after, n_content)
        if delay <= 0 and stall_at is None:
            if events:
                await resp.write(b"".join(events))
        else:
            for i, event in enumerate(events):
                if i == stall_at:
                    await asyncio.sleep(opts.get("stall_ms", 60000) / 1000)
                elif i and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(event)
        if drop_after is not None:
            close_connection(request)
            return resp
        if linger := opts.get("linger_ms", 0) / 1000:
            await asyncio.sleep(linger)
        await resp.write_eof()
    except ConnectionError:  # client went away (ClientConnectionResetError included)
        close_connection(request)
    return resp
