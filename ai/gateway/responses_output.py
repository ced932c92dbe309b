"""The Responses API's output: the Response object, its output items and usage.

Built from a chat completion (``ai.api.responses``) or from a chat stream
(``responses_events``); pure, no I/O.
"""

from __future__ import annotations

import json
import time

from .responses import INCOMPLETE_REASONS, ResponsesRequest, message_item, new_id


def response_object(
    request: ResponsesRequest,
    *,
    model: str,
    output: list[dict],
    status: str,
    usage: dict | None,
    finish_reason: str | None = None,
    error: dict | None = None,
) -> dict:
    """The Response object, echoing the request's settings as OpenAI's does."""
    body = request.body
    reason = INCOMPLETE_REASONS.get(finish_reason) if status == "incomplete" else None
    response = {
        "id": request.id,
        "object": "response",
        "created_at": request.created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": request.previous_response_id,
        "reasoning": None,
        "store": request.store,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [_echo_tool(tool) for tool in body.get("tools") or ()],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }
    if usage is not None:  # none while in progress
        response["usage"] = usage
    if body.get("user") is not None:  # a string when present, in the spec
        response["user"] = body["user"]
    return response


def _echo_tool(tool: dict) -> dict:
    echo = {
        "type": "function",
        "name": tool["name"],
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }
    if tool.get("description") is not None:
        echo["description"] = tool["description"]
    return echo


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason in INCOMPLETE_REASONS else "completed"


def output_items(message: dict) -> list[dict]:
    """A chat completion's message as output items: its text, then its function calls."""
    items = []
    content = message.get("content")
    if isinstance(content, str) and content:
        items.append(text_item(new_id("msg"), content, "completed"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        items.append(
            call_item(new_id("fc"), call.get("id") or new_id("call"), function, "completed")
        )
    return items


def text_item(item_id: str, text: str, status: str) -> dict:
    return message_item("assistant", [text_part(text)], item_id) | {"status": status}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, function: dict, status: str) -> dict:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def usage_block(block, *, input_tokens: int, output_tokens: int) -> dict:
    """Responses usage from a chat usage block (its details, when the upstream gave them)."""
    block = block if isinstance(block, dict) else {}
    cached = _detail(block, "prompt_tokens_details", "cached_tokens")
    reasoning = _detail(block, "completion_tokens_details", "reasoning_tokens")
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def _detail(block: dict, group: str, name: str) -> int:
    details = block.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def sse(event: dict) -> bytes:
    """One Responses stream event on the wire."""
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode())
