"""Chat completions as Anthropic Messages, and errors in Anthropic's shape (pure; no I/O)."""

from __future__ import annotations

import json

from panel.errors import ApiError, FeatureDisabled

from ..pricing import Usage
from ..responses_output import reasoning_of

# Anthropic's error ``type`` for each status (docs: "HTTP errors"); other 4xx are
# invalid requests, other 5xx API errors. 503 (a model or dependency unavailable
# for now, retry) reads as overloaded.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("req_")


def message_reply(payload: dict, *, chat: dict, usage: Usage, message_id: str, model: str) -> dict:
    """A chat completion (``payload``) as a Message; ``usage`` is the gateway's reading of it."""
    choices = payload.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict] = []
    if thinking := reasoning_of(message):
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = _reply_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            content.append(tool_use_block(call, arguments=call["function"].get("arguments")))
    stop_reason, stop_sequence = stop_of(choice, chat)
    if any(block["type"] == "tool_use" for block in content):
        stop_reason = "tool_use"  # some servers finish with "stop" after calling tools
    reply = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_block(usage),
    }
    if "x_switchboard" in payload:
        reply["x_switchboard"] = payload["x_switchboard"]
    return reply


def _reply_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def tool_use_block(call: dict, *, arguments) -> dict:
    """A tool call as a tool_use block; its arguments (JSON text) parsed, {} when not an object."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        parsed = {}
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") if isinstance(call.get("id"), str) else "",
        "name": function.get("name") if isinstance(function.get("name"), str) else "",
        "input": parsed if isinstance(parsed, dict) else {},
    }


def stop_of(choice: dict, chat: dict) -> tuple[str, str | None]:
    """The stop reason (and sequence) of a finished choice.

    vLLM names the stop string that matched in ``stop_reason``; other servers
    do not, and their stop reads as end_turn.
    """
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in (chat.get("stop") or ()):
        return "stop_sequence", matched
    return STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), None


def usage_block(usage: Usage) -> dict:
    """Anthropic's usage from the gateway's usage record: input_tokens exclude the cache's."""
    return {
        "input_tokens": usage.uncached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


# --- Errors ---------------------------------------------------------------------------


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(error: ApiError | FeatureDisabled, request_id: str) -> dict:
    """An ApiError in Anthropic's shape; extra fields (available_models) inside ``error``."""
    if isinstance(error, FeatureDisabled):
        inner = {"message": "The AI feature is disabled on this server."}
    else:
        inner = {"message": error.message, **error.extra}
    inner = {"type": error_type(error.status_code), **inner}
    return {"type": "error", "error": inner, "request_id": request_id}


def refusal_error(status: int, payload: dict | None) -> ApiError:
    """An upstream's own 4xx answer (OpenAI's envelope, or anything) as an ApiError."""
    inner = payload.get("error") if isinstance(payload, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    if not isinstance(message, str) or not message:
        message = f"The upstream refused the request (HTTP {status})."
    error = ApiError(message)
    error.status_code = status
    return error
