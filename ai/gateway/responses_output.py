"""The Responses API's output: the Response object, its output items and usage.

Built from a chat completion (``ai.api.responses``) or from a chat stream
(``responses_events``); pure, no I/O.
"""

from __future__ import annotations

import json
import time

from .pricing import Usage
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
        "reasoning": body.get("reasoning"),
        "store": request.store,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [_echo_tool(tool) for tool in body.get("tools") or ()],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
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
    """A chat completion's message as output items: its reasoning (as the reasoning item's
    summary), its text, then its function calls."""
    items = []
    if reasoning := reasoning_of(message):
        items.append(reasoning_item(new_id("rs"), [summary_part(reasoning)]))
    content = message.get("content")
    if isinstance(content, str) and content:
        items.append(text_item(new_id("msg"), content, "completed"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        items.append(
            call_item(new_id("fc"), call.get("id") or new_id("call"), function, "completed")
        )
    return items


def reasoning_of(message: dict) -> str:
    """A chat message's (or delta's) reasoning text: ``reasoning_content`` as llama.cpp,
    vLLM and DeepSeek send it (newer vLLM: ``reasoning``)."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(text := message.get(key), str) and text:
            return text
    return ""


def reasoning_item(item_id: str, summary: list[dict]) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": summary}


def summary_part(text: str) -> dict:
    return {"type": "summary_text", "text": text}


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


def usage_block(usage: Usage) -> dict:
    """Responses usage from the gateway's usage record (input counts the cache's tokens)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def sse(event: dict) -> bytes:
    """One Responses stream event on the wire."""
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode())
