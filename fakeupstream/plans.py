"""Scripted answers: what a chat or text completion says, how long it is, and its usage.

Owns the deterministic content (token ``i`` is ``f"tok{i} "``), the rough token counts of
prompts and messages, and ``Plan``, the decision a completion handler renders as JSON or SSE.
Also the checks on the request fields a plan reads (``model``, ``max_tokens``, ``prompt``).
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

from fakeupstream import llamacpp
from fakeupstream.wire import BadRequest

DEFAULT_TOKENS = 20

_TOKEN_CACHE: list[str] = []


def tokens(n: int) -> list[str]:
    """The first ``n`` tokens of every scripted answer."""
    while len(_TOKEN_CACHE) < n:
        _TOKEN_CACHE.append(f"tok{len(_TOKEN_CACHE)} ")
    return _TOKEN_CACHE[:n]


@functools.lru_cache(maxsize=256)
def _content(n: int) -> str:
    return "".join(tokens(n))


# --------------------------------------------------------------------------- counting


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def message_words(messages: list[Any]) -> int:
    """The words in the text parts of chat messages (the fake's prompt token count)."""
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


def prompt_items(value: Any, field: str) -> list[str | list[int]]:
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
                raise BadRequest(
                    f"'{field}' items must be strings or arrays of integers", param=field
                )
        return items
    raise BadRequest(
        f"'{field}' must be a string, an array of strings or an array of token arrays",
        param=field,
    )


def item_tokens(item: str | list[int]) -> int:
    return _words(item) if isinstance(item, str) else len(item)


# --------------------------------------------------------------------------- request fields


def model_of(body: dict[str, Any], default: str) -> str:
    model = body.get("model")
    if model is None:
        return default
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    return model


def optional_int(body: dict[str, Any], field: str, minimum: int = 0) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"'{field}' must be an integer >= {minimum}", param=field)
    return value


# --------------------------------------------------------------------------- the plan


class Plan:
    """What to answer for a chat/completions request."""

    __slots__ = (
        "model",
        "pieces",
        "content",
        "finish",
        "usage",
        "stream",
        "include_usage",
        "tool_calls",
        "timings",
    )

    def __init__(self, body: dict[str, Any], opts: dict[str, Any], default_model: str, words: int):
        self.model = model_of(body, default_model)
        cap = optional_int(body, "max_completion_tokens")
        if cap is None:
            cap = optional_int(body, "max_tokens")
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
            self.pieces = tokens(n)
            self.content = _content(n)
            completion_tokens = n
        self.tool_calls = _planned_calls(body, opts)
        if self.tool_calls:
            self.finish, self.content, self.pieces = "tool_calls", "", []
            completion_tokens = sum(len(c["function"]["arguments"]) for c in self.tool_calls)
        prompt_tokens = opts.get("prompt_tokens", max(1, words))
        self.usage = (
            None if opts.get("no_usage") else _usage(prompt_tokens, completion_tokens, opts)
        )
        cache_n = opts.get("cache_n")
        self.timings = (
            None if cache_n is None else llamacpp.timings(prompt_tokens, completion_tokens, cache_n)
        )
        self.stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        self.include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )


def _planned_calls(body: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls of a chat reply: ``tool_calls=N`` asked for, else the one a request
    with ``tools`` makes unasked (``tool_call_of``); none for echo or a text completion."""
    if "messages" not in body or opts.get("echo"):
        return []
    if opts.get("tool_calls"):
        return tool_calls(body, opts["tool_calls"])
    call = tool_call_of(body)
    if call is None:
        return []
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": call}]


def tool_calls(body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """``n`` calls of the request's function tools, in turn (``fake_tool`` without any)."""
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    names = [
        t["function"]["name"]
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ] or ["fake_tool"]
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": names[i % len(names)], "arguments": json.dumps({"call": i})},
        }
        for i in range(n)
    ]


def tool_call_of(body: dict[str, Any]) -> dict[str, str] | None:
    """The function a request with ``tools`` calls unasked: the one it names, else its first.

    A request whose messages already hold a tool's result, or whose ``tool_choice`` is
    ``"none"``, gets text instead, so a tool loop ends after one round. The
    arguments are ``{"query": <the last user message's text>}``.
    """
    tools, choice = body.get("tools"), body.get("tool_choice")
    messages = body.get("messages") or [{}]
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if any(not isinstance(m, dict) or m.get("role") == "tool" for m in messages):
        return None
    names = [
        t["function"].get("name")
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        names = [choice["function"].get("name")]
    if not names or not isinstance(names[0], str):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    query = users[-1].get("content") if users else ""
    arguments = json.dumps({"query": query if isinstance(query, str) else ""})
    return {"name": names[0], "arguments": arguments}


def _usage(prompt_tokens: int, completion_tokens: int, opts: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage block, with the cache and reasoning details asked for (or Anthropic's)."""
    read, write = opts.get("cached_tokens"), opts.get("cache_write_tokens")
    if opts.get("anthropic_usage"):
        return {
            "input_tokens": max(0, prompt_tokens - (read or 0) - (write or 0)),
            "output_tokens": completion_tokens,
            "cache_read_input_tokens": read or 0,
            "cache_creation_input_tokens": write or 0,
        }
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    details = {"cached_tokens": read, "cache_write_tokens": write}
    if any(v is not None for v in details.values()):
        usage["prompt_tokens_details"] = {k: v for k, v in details.items() if v is not None}
    if opts.get("reasoning_tokens") is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": opts["reasoning_tokens"]}
    return usage
