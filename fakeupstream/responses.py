"""OpenAI's Responses API (``POST /v1/responses``), as an upstream that serves it answers.

A text answer (``tok0 tok1 ...``) as one response object, or as the Responses events
(``response.created``, ``response.in_progress``, the output item and text events with
``response.output_text.delta`` per token, ``response.completed``), with the Responses
usage block (``input_tokens_details.cached_tokens``, ``output_tokens_details``). The
content options (``tokens``, ``echo``, ``no_usage``, ``prompt_tokens``, ``cached_tokens``,
``reasoning_tokens``) and the faults (``status``, ``drop_after``, ``ttft_ms``...) apply.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from fakeupstream.plans import Plan, message_words
from fakeupstream.sse import _stream
from fakeupstream.wire import BadRequest, dumps, json_response


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    return message_words([item for item in value if isinstance(item, dict)])


def _usage(plan: Plan, opts: dict[str, Any]) -> dict[str, Any] | None:
    if plan.usage is None:
        return None
    prompt, completion = plan.usage["prompt_tokens"], plan.usage["completion_tokens"]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": opts.get("cached_tokens") or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": opts.get("reasoning_tokens") or 0},
        "total_tokens": prompt + completion,
    }


def _response(body: dict[str, Any], plan: Plan, response_id: str, status: str, output, usage):
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": plan.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "usage": usage,
        "metadata": body.get("metadata", {}),
    }


async def responses(request: web.Request, body: Any, opts: dict[str, Any]) -> web.StreamResponse:
    given = body.get("input")
    if not isinstance(given, (str, list)) or not given:
        raise BadRequest("'input' must be a string or a non-empty array", param="input")
    planned = {k: v for k, v in body.items() if k not in ("tools", "stream", "input")}
    if "max_output_tokens" in body:
        planned["max_tokens"] = body["max_output_tokens"]
    plan = Plan(planned, {**opts, "tool_calls": 0}, "fake-chat", _words(given))
    status = "incomplete" if plan.finish == "length" else "completed"
    response_id = f"resp_{uuid.uuid4().hex}"
    item_id = f"msg_{uuid.uuid4().hex}"
    text = {"type": "output_text", "text": plan.content, "annotations": []}
    item = {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [text],
    }
    usage = _usage(plan, opts)
    if body.get("stream") is not True:
        return json_response(_response(body, plan, response_id, status, [item], usage))
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": next(sequence), **fields}
        return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"

    opening = _response(body, plan, response_id, "in_progress", [], None)
    empty_item = {**item, "status": "in_progress", "content": []}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    pieces = plan.pieces if plan.pieces is not None else [plan.content]
    events = [
        event("response.created", response=opening),
        event("response.in_progress", response=opening),
        event("response.output_item.added", output_index=0, item=empty_item),
        event("response.content_part.added", part={**text, "text": ""}, **where),
    ]
    contents = [event("response.output_text.delta", delta=piece, **where) for piece in pieces]
    events += contents
    events += [
        event("response.output_text.done", text=plan.content, **where),
        event("response.content_part.done", part=text, **where),
        event("response.output_item.done", output_index=0, item=item),
        event(
            f"response.{status}",
            response=_response(body, plan, response_id, status, [item], usage),
        ),
    ]
    return await _stream(request, opts, events, 4, len(contents))
