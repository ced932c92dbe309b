"""Anthropic Messages replies as OpenAI chat completions, and its errors in OpenAI's envelope
(pure; no I/O).

The reverse of ``reply``: what an Anthropic-style upstream answers a chat-protocol call.
Text blocks make the message's ``content``, ``tool_use`` blocks its ``tool_calls``,
``thinking`` blocks its ``reasoning_content``; the usage follows OpenAI's convention
(``prompt_tokens`` includes the cache's reads and writes).
"""

from __future__ import annotations

import json

from ..pricing import Usage, usage_from_block

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def completion_id(message_id) -> str:
    """The chat completion id of a Message id (``msg_x`` -> ``chatcmpl-x``)."""
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) else ""
    return "chatcmpl-" + suffix


def finish_reason(stop_reason) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


def chat_usage(usage: Usage) -> dict:
    """OpenAI's usage block for the gateway's usage: prompt_tokens include the cache's."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
    }


def chat_completion(message: dict, *, created: int) -> dict:
    """A Message (an Anthropic-style upstream's JSON reply) as a chat completion."""
    texts, thoughts, calls = [], [], []
    blocks = message.get("content")
    for block in blocks if isinstance(blocks, list) else ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        elif kind == "tool_use":
            calls.append(tool_call(block))
    reply_message: dict = {"role": "assistant", "content": "".join(texts) if texts else None}
    if not calls and reply_message["content"] is None:
        reply_message["content"] = ""
    if calls:
        reply_message["tool_calls"] = calls
    if thoughts:
        reply_message["reasoning_content"] = "".join(thoughts)
    choice = {
        "index": 0,
        "message": reply_message,
        "logprobs": None,
        "finish_reason": finish_reason(message.get("stop_reason")),
    }
    completion = {
        "id": completion_id(message.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model") if isinstance(message.get("model"), str) else "",
        "choices": [choice],
    }
    usage = usage_from_block(message.get("usage"))
    if usage is not None:
        completion["usage"] = chat_usage(usage)
    return completion


def tool_call(block: dict) -> dict:
    """A tool_use block as a chat tool call (its input as JSON text)."""
    name = block.get("name")
    arguments = block.get("input")
    return {
        "id": block.get("id") if isinstance(block.get("id"), str) else "",
        "type": "function",
        "function": {
            "name": name if isinstance(name, str) else "",
            "arguments": json.dumps(arguments if isinstance(arguments, dict) else {}),
        },
    }


def openai_error(status: int, payload: dict | None) -> dict:
    """An Anthropic-style upstream's own 4xx answer (``{"type": "error", "error": {...}}``)
    in OpenAI's error envelope, its message and type kept."""
    inner = payload.get("error") if isinstance(payload, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    message = inner.get("message")
    if not isinstance(message, str) or not message:
        message = f"The upstream refused the request (HTTP {status})."
    kind = inner.get("type")
    kind = kind if isinstance(kind, str) and kind else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
