"""The Responses API on chat-completions upstreams: the request side.

Pure translation, no I/O. ``request_parse`` checks a ``POST /v1/responses`` body
(wrong types: 400 for every upstream) and notes the first thing chat completions
cannot carry (``ResponsesRequest.untranslatable``: unknown fields, built-in tools,
input items and content parts of other kinds): such a request goes only to
upstreams that serve the Responses API, and a model without one refuses it (400,
naming it). ``chat_body`` turns its input items (a continued conversation's
history first) into a chat request. The Response object is built in
``responses_output``, a stream's events in ``responses_events``.

Fields beyond chat's: ``reasoning.effort`` becomes ``reasoning_effort`` (its
``summary`` is echoed; the upstream's reasoning text is the reasoning item's
summary); ``include`` is accepted, and its values are ignored (nothing it names
is filled: no encrypted reasoning, no logprobs, no tool call outputs); ``truncation``
``auto`` drops the oldest input items after the instructions until the prompt
estimate fits the model's context (``context_window`` in its config; without one,
nothing); ``background: true`` is refused (this gateway answers while connected).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from panel.errors import ApiError, InvalidRequest

from .pricing import estimate_prompt
from .validation import MAX_COUNT

# Fields translated to chat completions, or kept by the gateway itself.
SUPPORTED = frozenset(
    {
        "model",
        "modelId",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "store",
        "previous_response_id",
        "metadata",
        "user",
        "text",
        "reasoning",
        "include",
        "truncation",
        "background",
    }
)
EFFORTS = ("none", "minimal", "low", "medium", "high")
SUMMARIES = ("auto", "concise", "detailed")
# Output items of earlier turns that chat completions go without: the model's reasoning.
DROPPED_ITEMS = ("reasoning",)
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(slots=True)
class ResponsesRequest:
    """A checked Responses request: what the response echoes and what goes upstream."""

    body: dict
    items: list[dict]  # this request's input items, each with an id
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    # What chat completions cannot carry, in order: the first is the 400 of a model
    # whose upstreams all need the translation.
    lost: list[ApiError] = field(default_factory=list)

    @property
    def untranslatable(self) -> ApiError | None:
        return self.lost[0] if self.lost else None

    @property
    def store(self) -> bool:
        return self.body.get("store", True) is not False

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def previous_response_id(self) -> str | None:
        return self.body.get("previous_response_id")


# --- The request ------------------------------------------------------------------------


def request_parse(body: dict) -> ResponsesRequest:
    """The checked request (with what translation cannot carry), or InvalidRequest."""
    lost: list[ApiError] = []
    unsupported = sorted(n for n, v in body.items() if n not in SUPPORTED and v is not None)
    if unsupported:
        names = ", ".join(unsupported)
        lost.append(
            InvalidRequest(
                f"This gateway does not support these Responses API fields: {names}.",
                param=unsupported[0],
            )
        )
    if "input" not in body:
        raise InvalidRequest("'input' is a required property.", param="input")
    _check_scalars(body)
    _check_fields(body)
    choice = body.get("tool_choice")
    if choice is not None and _chat_tool_choice(choice) is None:  # a built-in tool's
        message = "'tool_choice' must be none, auto, required or a function tool here."
        lost.append(InvalidRequest(message, param="tool_choice"))
    for index, tool in enumerate(body.get("tools") or ()):
        _check_tool(tool, f"tools[{index}]", lost)
    items = input_items(body["input"], lost)
    return ResponsesRequest(body=body, items=items, lost=lost)


def _check_fields(body: dict) -> None:
    """reasoning, include, truncation and background: their types and values."""
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise InvalidRequest("'reasoning' must be an object.", param="reasoning")
        _choice(reasoning, "effort", EFFORTS, "reasoning.effort")
        _choice(reasoning, "summary", SUMMARIES, "reasoning.summary")
    include = body.get("include")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(v, str) for v in include)
    ):
        raise InvalidRequest("'include' must be an array of strings.", param="include")
    _choice(body, "truncation", ("auto", "disabled"), "truncation")
    background = body.get("background")
    if background is not None and not isinstance(background, bool):
        raise InvalidRequest("'background' must be a boolean.", param="background")
    if background:
        raise InvalidRequest(
            "'background' responses are not supported: this gateway answers while the "
            "client is connected (send background: false, or stream).",
            param="background",
        )


def _choice(body: dict, key: str, values: tuple[str, ...], param: str) -> None:
    value = body.get(key)
    if value is not None and value not in values:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(values)}.", param=param)


def _check_scalars(body: dict) -> None:
    checks = (
        ("instructions", str, "a string"),
        ("tools", list, "an array of function tools"),
        ("parallel_tool_calls", bool, "a boolean"),
        ("stream", bool, "a boolean"),
        ("store", bool, "a boolean"),
        ("previous_response_id", str, "a string"),
        ("metadata", dict, "an object of strings"),
        ("user", str, "a string"),
        ("text", dict, "an object"),
    )
    for name, kind, expected in checks:
        if body.get(name) is not None and not isinstance(body[name], kind):
            raise InvalidRequest(f"'{name}' must be {expected}.", param=name)
    metadata = body.get("metadata") or {}
    if len(metadata) > 16 or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidRequest("'metadata' must map at most 16 keys to strings.", param="metadata")
    _check_number(body, "temperature", 2)
    _check_number(body, "top_p", 1)
    tokens = body.get("max_output_tokens")
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= MAX_COUNT
    ):
        raise InvalidRequest(
            f"'max_output_tokens' must be an integer from 1 to {MAX_COUNT}.",
            param="max_output_tokens",
        )
    _response_format(body.get("text"))


def _check_number(body: dict, name: str, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from 0 to {high}.", param=name)


def _check_tool(tool, name: str, lost: list[ApiError]) -> None:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"'{name}' must be an object.", param=name)
    if not isinstance(tool.get("type"), str):
        raise InvalidRequest(f"'{name}.type' must be a string.", param=f"{name}.type")
    if tool["type"] != "function":
        message = f"'{name}': built-in tools ({tool['type']!r}) are not supported here; "
        lost.append(InvalidRequest(message + "only function tools are.", param=name))
        return
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise InvalidRequest(f"'{name}.name' must be a string.", param=f"{name}.name")
    if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
        raise InvalidRequest(f"'{name}.parameters' must be an object.", param=f"{name}.parameters")


def input_items(value, lost: list[ApiError]) -> list[dict]:
    """The request's ``input`` as a list of items, each checked and given an id."""
    if isinstance(value, str):
        return [message_item("user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
    return [_input_item(item, f"input[{index}]", lost) for index, item in enumerate(value)]


def message_item(role: str, content: list[dict], item_id: str | None = None) -> dict:
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "role": role,
        "content": content,
        "status": "completed",
    }


def _input_item(item, name: str, lost: list[ApiError]) -> dict:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{name}' must be an object.", param=name)
    kind = item.get("type", "message")
    if kind == "message":
        if item.get("role") not in ROLES:
            raise InvalidRequest(
                f"'{name}.role' must be one of user, assistant, system, developer.",
                param=f"{name}.role",
            )
        content = item.get("content")
        if isinstance(content, str):
            text_kind = "output_text" if item["role"] == "assistant" else "input_text"
            content = [{"type": text_kind, "text": content}]
        if not isinstance(content, list):
            raise InvalidRequest(
                f"'{name}.content' must be a string or an array.", param=f"{name}.content"
            )
        for index, part in enumerate(content):
            _chat_part(part, f"{name}.content[{index}]", lost)
        return message_item(item["role"], content, item.get("id"))
    if kind == "function_call":
        _strings(item, name, "call_id", "name", "arguments")
        fields = ("call_id", "name", "arguments")
        return {"type": kind, "id": item.get("id") or new_id("fc"), "status": "completed"} | {
            key: item[key] for key in fields
        }
    if kind == "function_call_output":
        _strings(item, name, "call_id", "output")
        return {
            "type": kind,
            "id": item.get("id") or new_id("fco"),
            "call_id": item["call_id"],
            "output": item["output"],
            "status": "completed",
        }
    if not isinstance(kind, str):
        raise InvalidRequest(f"'{name}.type' must be a string.", param=f"{name}.type")
    if kind not in DROPPED_ITEMS:
        message = f"'{name}': input items of type {kind!r} are not supported."
        lost.append(InvalidRequest(message, param=name))
    # Kept as sent (and stored): an upstream serving the Responses API reads it.
    return {**item, "id": item.get("id") or new_id("item")}


def _strings(item: dict, name: str, *keys: str) -> None:
    for key in keys:
        if not isinstance(item.get(key), str):
            raise InvalidRequest(f"'{name}.{key}' must be a string.", param=f"{name}.{key}")


# --- To chat completions ---------------------------------------------------------------


def chat_body(request: ResponsesRequest, history: list[dict]) -> dict:
    """The chat completions request for ``history`` (every input item, in order); what it
    cannot carry of a continued conversation is added to ``request.lost``."""
    body = request.body
    messages = (
        [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    )
    messages.extend(chat_messages(history, request.lost))
    chat = {"model": body.get("model"), "messages": messages}
    if body.get("modelId") is not None:
        chat["modelId"] = body["modelId"]
    if tools := [tool for tool in body.get("tools") or () if tool["type"] == "function"]:
        chat["tools"] = [_chat_tool(tool) for tool in tools]
    renames = (
        ("tool_choice", _chat_tool_choice(body.get("tool_choice"))),
        ("parallel_tool_calls", body.get("parallel_tool_calls")),
        ("max_tokens", body.get("max_output_tokens")),
        ("temperature", body.get("temperature")),
        ("top_p", body.get("top_p")),
        ("user", body.get("user")),
        ("response_format", _response_format(body.get("text"))),
        ("reasoning_effort", (body.get("reasoning") or {}).get("effort")),
    )
    chat.update((key, value) for key, value in renames if value is not None)
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def truncated(request: ResponsesRequest, items: list[dict], context: int | None) -> list[dict]:
    """``truncation: auto``: the oldest items dropped (the instructions kept) until the prompt
    estimate fits ``context``; a function call's output never outlives its call."""
    if request.body.get("truncation") != "auto" or not context:
        return items
    instructions = request.body.get("instructions") or ""
    while (
        len(items) > 1
        and estimate_prompt({"messages": [{"content": instructions}, *chat_messages(items, [])]})
        > context
    ):
        items = items[1:]
        while len(items) > 1 and items[0]["type"] == "function_call_output":
            items = items[1:]
    return items


def chat_messages(items: list[dict], lost: list[ApiError]) -> list[dict]:
    """Input and output items as chat messages; a turn's function calls share one message.

    Reasoning items are dropped; items of other kinds (a passed-through upstream's built-in
    tool calls) are lost."""
    messages: list[dict] = []
    for item in items:
        if item["type"] == "message":
            if message := _chat_message(item, lost):
                messages.append(message)
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            # After the assistant's text or its other calls of the same turn.
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": None})
            messages[-1].setdefault("tool_calls", []).append(call)
        elif item["type"] == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
        elif item["type"] not in DROPPED_ITEMS:
            message = f"Items of type {item['type']!r} are not supported here."
            lost.append(InvalidRequest(message, param="input"))
    return messages


def _chat_message(item: dict, lost: list[ApiError]) -> dict | None:
    role = ROLES.get(item.get("role"))
    content = item.get("content")
    if role is None or not isinstance(content, list):  # a stored item of another shape
        return None
    parts = [p for p in (_chat_part(part, "input", lost) for part in content) if p]
    if all(part["type"] == "text" for part in parts):
        return {"role": role, "content": "".join(part["text"] for part in parts)}
    return {"role": role, "content": parts}


def _chat_part(part, name: str, lost: list[ApiError]) -> dict | None:
    """A content part as a chat part; None, and lost, for a kind chat cannot carry."""
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{name}' must be an object.", param=name)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "refusal"):
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"'{name}.text' must be a string.", param=f"{name}.text")
        return {"type": "text", "text": text}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if not isinstance(kind, str):
        raise InvalidRequest(f"'{name}.type' must be a string.", param=f"{name}.type")
    message = (
        f"'{name}': content parts of type {kind!r} are not supported here "
        "(input_text, input_image with an image_url, output_text are)."
    )
    lost.append(InvalidRequest(message, param=name))
    return None


def _chat_tool(tool: dict) -> dict:
    function = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice):
    """The chat tool choice; None for one chat cannot carry (a built-in tool's)."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    is_function = isinstance(choice, dict) and choice.get("type") == "function"
    if is_function and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str) and not is_function:
        return None
    raise InvalidRequest(
        '\'tool_choice\' must be none, auto, required or {"type": "function", "name": ...}.',
        param="tool_choice",
    )


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format")
    if fmt is None or fmt == {"type": "text"}:
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("'text.format' must be text, json_object or json_schema.", param="text")
