"""Anthropic's Messages API (``POST /v1/messages``), as an Anthropic-style upstream answers it.

JSON or SSE (``message_start``, ``content_block_*``, ``ping``, ``message_delta``,
``message_stop``), with Anthropic's usage block: ``input_tokens`` without the cache's,
``cache_read_input_tokens`` (the ``cached_tokens`` option), ``cache_creation_input_tokens``
(``cache_write_tokens``). The content options (``tokens``, ``echo``, ``no_usage``,
``prompt_tokens``, ``tool_calls``: tool_use blocks for the request's ``tools``, text once
the last turn holds a tool_result) and the faults (``status`` in Anthropic's error shape,
``drop_after``, ``ttft_ms``...) apply. Like Anthropic's API, it refuses (400) fields it
does not know, roles other than user and assistant, turns that do not alternate, and
unknown content block types: a request translated from OpenAI's shape must be whole.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from fakeupstream.plans import Plan, message_words
from fakeupstream.sse import _stream
from fakeupstream.wire import BadRequest, dumps, json_response

_STOP = {"stop": "end_turn", "length": "max_tokens"}
# The request fields Anthropic's API knows (it refuses others: "Extra inputs are not permitted").
FIELDS = frozenset(
    [
        "model",
        "max_tokens",
        "messages",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        # Beta fields (with their anthropic-beta header at the real API).
        "mcp_servers",
        "container",
        "context_management",
    ]
)
BLOCKS = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def _check(body: dict[str, Any], *, beta: bool) -> None:
    """Anthropic's own checks on the request's shape (a 400 naming the field); a request
    with an ``anthropic-beta`` header may carry fields of that beta (any, here)."""
    for field in body:
        if field not in FIELDS and not beta:
            raise BadRequest(f"{field}: Extra inputs are not permitted")
    previous = None
    for index, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if role == previous:
            raise BadRequest("messages: roles must alternate between 'user' and 'assistant'")
        previous, content = role, message.get("content")
        for number, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, dict) or block.get("type") not in BLOCKS:
                raise BadRequest(f"messages.{index}.content.{number}.type: Input tag is invalid")


def _answers_a_tool(chat: list[Any]) -> bool:
    """Whether the last turn holds a tool's result (the model answers in text then)."""
    content = chat[-1].get("content")
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def _tool_uses(body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if not n or not isinstance(tools, list) or not tools or _answers_a_tool(body["messages"]):
        return []
    names = [t.get("name", "tool") if isinstance(t, dict) else "tool" for t in tools]
    return [
        {
            "type": "tool_use",
            "id": f"toolu_{i:024d}",
            "name": names[i % len(names)],
            "input": {"call": i},
        }
        for i in range(n)
    ]


async def messages(request: web.Request, body: Any, opts: dict[str, Any]) -> web.StreamResponse:
    chat = body.get("messages")
    if not isinstance(chat, list) or not chat:
        raise BadRequest("messages: Field required")
    if not isinstance(body.get("max_tokens"), int):
        raise BadRequest("max_tokens: Field required")
    _check(body, beta="anthropic-beta" in request.headers)
    system = body.get("system")
    words = message_words(chat) + (len(system.split()) if isinstance(system, str) else 0)
    planned = {k: v for k, v in body.items() if k not in ("tools", "stream")}
    plan = Plan(planned, {**opts, "tool_calls": 0, "anthropic_usage": True}, "fake-chat", words)
    uses = _tool_uses(body, opts.get("tool_calls") or 0)
    stop = "tool_use" if uses else _STOP.get(plan.finish, "end_turn")
    message_id = f"msg_{int(time.time() * 1000):x}{id(request) & 0xFFFF:04x}"
    if body.get("stream") is True:
        events, n_content = _events(plan, uses, stop, message_id)
        return await _stream(request, opts, events, 3, n_content)
    content = uses or [{"type": "text", "text": plan.content}]
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    if plan.usage is not None:
        message["usage"] = plan.usage
    return json_response(message)


def _events(
    plan: Plan, uses: list[dict[str, Any]], stop: str, message_id: str
) -> tuple[list[bytes], int]:
    """The stream's events, and how many of them are content (``drop_after`` counts those)."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if plan.usage is not None:
        start["usage"] = {**plan.usage, "output_tokens": 1}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if uses:
        for use in uses:
            arguments = json.dumps(use["input"])
            half = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (arguments[:half], arguments[half:])
            ]
            blocks.append(({**use, "input": {}}, deltas))
    else:
        pieces = plan.pieces if plan.pieces is not None else [plan.content]
        blocks.append(
            ({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces])
        )
    contents: list[bytes] = []
    for index, (block, deltas) in enumerate(blocks):
        opening = _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
        if index == 0:
            events += [opening, _event("ping", {"type": "ping"})]
        else:
            contents.append(opening)
        contents += [
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
            )
            for d in deltas
        ]
        contents.append(
            _event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    events += contents
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
    }
    if plan.usage is not None:
        delta["usage"] = {"output_tokens": plan.usage["output_tokens"]}
    events += [_event("message_delta", delta), _event("message_stop", {"type": "message_stop"})]
    return events, len(contents)
