"""Anthropic Messages requests as OpenAI chat completion bodies (pure; no I/O).

``chat_translation`` checks a Messages body and builds the chat body sent to
translated upstreams, with what it could not carry (the 400 it would answer:
the route passes the request to upstreams that speak Messages, else refuses it);
``chat_body`` is the strict form (count_tokens), ``prompt_estimate`` count_tokens'
answer. Wrong types are refused for every upstream. Field names in error messages
follow Anthropic's dotted style (``messages.0.content.1.text``).

Choices for translated upstreams (README, "Anthropic Messages"):

- mapped: ``top_k`` passed on as ``top_k`` (llama.cpp and vLLM read it; an upstream
  that refuses it answers 400); ``metadata.user_id`` becomes ``user``; ``thinking``
  enabled becomes ``reasoning_effort`` by its ``budget_tokens``: under 4096 ``low``,
  under 16384 ``medium``, else ``high`` (disabled: none); a tool_result with
  ``is_error`` reads "Error: ...".
- dropped: thinking blocks of earlier assistant turns (no upstream here returns
  signed thinking); ``cache_control`` anywhere and ``service_tier`` (hints: chat
  servers cache prompt prefixes on their own and have no tiers); other unknown
  top-level fields.
- untranslatable (only an upstream speaking Messages may serve): document, search
  result, server tool and other non-chat blocks, image sources other than base64 and
  url, server tools, ``mcp_servers``, ``container`` and ``context_management``.
"""

from __future__ import annotations

import json

from panel.errors import ApiError, InvalidRequest

from ..pricing import estimate_prompt, estimate_tokens

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
DROPPED_BLOCKS = ("thinking", "redacted_thinking")
# Top-level fields that ask for what only Anthropic's own servers do.
NATIVE_ONLY = ("mcp_servers", "container", "context_management")
# ``thinking.budget_tokens`` below each bound reads as this effort; above them, "high".
EFFORTS = ((4096, "low"), (16384, "medium"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {problem}", param=param)


def chat_body(body: dict, *, counting: bool = False) -> dict:
    """The chat completion body for a Messages body (``counting``: count_tokens' body);
    InvalidRequest for what it cannot translate."""
    chat, untranslatable = chat_translation(body, counting=counting)
    if untranslatable is not None:
        raise untranslatable
    return chat


def chat_translation(body: dict, *, counting: bool = False) -> tuple[dict, ApiError | None]:
    """The chat body of what translates, and the error for the first thing that does not."""
    lost: list[ApiError] = []
    chat = _translate(body, counting, lost)
    return chat, (lost[0] if lost else None)


def _translate(body: dict, counting: bool, lost: list[ApiError]) -> dict:
    chat: dict = {}
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _bad("model", "Input should be a valid string")
        chat["model"] = model
    if not counting:
        chat["max_tokens"] = _max_tokens(body)
    if "messages" not in body:
        raise _bad("messages", "Field required")
    chat["messages"] = [*_system(body.get("system")), *_messages(body["messages"], lost)]
    _sampling(body, chat)
    _tools(body, chat, lost)
    _metadata(body.get("metadata"), chat)
    _thinking(body.get("thinking"), chat, lost)
    for name in NATIVE_ONLY:
        if body.get(name):
            lost.append(_bad(name, "is not supported by this model's upstreams"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "Input should be a valid boolean")
    if stream and not counting:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _max_tokens(body: dict) -> int:
    if "max_tokens" not in body:
        raise _bad("max_tokens", "Field required")
    value = body["max_tokens"]
    if not _is_int(value) or value < 1:
        raise _bad("max_tokens", "Input should be an integer of at least 1")
    return value  # the upper bound is the model's (validation.bounds_check)


def _system(system) -> list[dict]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad("system", "Input should be a valid string or a list of text blocks")
    texts = []
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"system.{index}", "Input should be a text block")
        texts.append(_text(block, f"system.{index}"))
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _text(block: dict, name: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{name}.text", "Input should be a valid string")
    return text


def _messages(messages, lost: list[ApiError]) -> list[dict]:
    if not isinstance(messages, list):
        raise _bad("messages", "Input should be a valid list")
    chat = []
    for index, message in enumerate(messages):
        name = f"messages.{index}"
        if not isinstance(message, dict):
            raise _bad(name, "Input should be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise _bad(f"{name}.role", "Input should be 'user' or 'assistant'")
        if isinstance(content, str):
            chat.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise _bad(f"{name}.content", "Input should be a valid string or a list of blocks")
        elif role == "user":
            chat.extend(_user_blocks(content, f"{name}.content", lost))
        else:
            chat.append(_assistant_blocks(content, f"{name}.content", lost))
    return chat


def _unknown_block(block, where: str, lost: list[ApiError]) -> None:
    """A block chat completions cannot carry: lost (an upstream that speaks Messages may
    take it); one that is not an object with a type is refused outright."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad(where, "Input should be a block object with a type")
    lost.append(_bad(f"{where}.type", f"block type {block['type']!r} is not supported here"))


def _user_blocks(blocks: list, name: str, lost: list[ApiError]) -> list[dict]:
    """Tool results become tool messages, first; the other blocks one user message."""
    tools, parts = [], []
    for index, block in enumerate(blocks):
        where = f"{name}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.extend(_image(block, where, lost))
        elif kind == "tool_result":
            message, images = _tool_result(block, where, lost)
            tools.append(message)
            parts.extend(images)
        elif kind not in DROPPED_BLOCKS:
            _unknown_block(block, where, lost)
    if not parts and tools:
        return tools
    return [*tools, {"role": "user", "content": _content(parts)}]


def _content(parts: list[dict]) -> str | list[dict]:
    """One text part as a plain string (what every upstream reads), else the parts."""
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _image(block: dict, name: str, lost: list[ApiError]) -> list[dict]:
    """The image part of an image block (none when its source cannot be translated)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f"{name}.source", "media_type and data should be strings")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str):
            raise _bad(f"{name}.source.url", "Input should be a valid string")
    elif isinstance(kind, str):  # "file" (the Files API) and later kinds: Anthropic's own
        lost.append(_bad(f"{name}.source.type", "Input should be 'base64' or 'url'"))
        return []
    else:
        raise _bad(f"{name}.source.type", "Input should be a valid string")
    return [{"type": "image_url", "image_url": {"url": url}}]


def _tool_result(block: dict, name: str, lost: list[ApiError]) -> tuple[dict, list[dict]]:
    """The tool message of a tool_result block, and the images it holds (sent as user parts)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise _bad(f"{name}.tool_use_id", "Input should be a valid string")
    content, texts, images = block.get("content"), [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_text(part, f"{name}.content.{index}"))
            elif kind == "image":
                images.extend(_image(part, f"{name}.content.{index}", lost))
            else:
                _unknown_block(part, f"{name}.content.{index}", lost)
    elif content is not None:
        raise _bad(f"{name}.content", "Input should be a valid string or a list of blocks")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad(f"{name}.is_error", "Input should be a valid boolean")
    text = "\n".join(texts)
    if is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _assistant_blocks(blocks: list, name: str, lost: list[ApiError]) -> dict:
    parts, calls = [], []
    for index, block in enumerate(blocks):
        where = f"{name}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind not in DROPPED_BLOCKS:
            _unknown_block(block, where, lost)
    message: dict = {"role": "assistant", "content": _content(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _tool_call(block: dict, name: str) -> dict:
    call_id, tool, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str):
        raise _bad(f"{name}.id", "Input should be a valid string")
    if not isinstance(tool, str):
        raise _bad(f"{name}.name", "Input should be a valid string")
    if not isinstance(arguments, dict):
        raise _bad(f"{name}.input", "Input should be an object")
    function = {"name": tool, "arguments": json.dumps(arguments)}
    return {"id": call_id, "type": "function", "function": function}


def _sampling(body: dict, chat: dict) -> None:
    for field in ("temperature", "top_p", "top_k"):
        value = body.get(field)
        if value is not None:
            if not _is_number(value):
                raise _bad(field, "Input should be a valid number")
            chat[field] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences", "Input should be a list of strings")
        if stops:
            chat["stop"] = stops


def _tools(body: dict, chat: dict, lost: list[ApiError]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "Input should be a valid list")
        functions = [_tool(tool, f"tools.{i}", lost) for i, tool in enumerate(tools)]
        if functions := [function for function in functions if function]:
            chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in TOOL_CHOICES:
        chat["tool_choice"] = TOOL_CHOICES[kind]
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice", "Input should be auto, any, none, or a tool with a name")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    if parallel and chat.get("tools"):
        chat["parallel_tool_calls"] = False


def _tool(tool, name: str, lost: list[ApiError]) -> dict | None:
    """A client tool as a function; a server tool (web search, bash...) is lost (None)."""
    if not isinstance(tool, dict):
        raise _bad(name, "Input should be an object")
    if tool.get("type") not in (None, "custom"):
        if not isinstance(tool["type"], str):
            raise _bad(f"{name}.type", "Input should be a valid string")
        lost.append(_bad(f"{name}.type", "only client tools (name, input_schema) are supported"))
        return None
    if not isinstance(tool.get("name"), str):
        raise _bad(f"{name}.name", "Input should be a valid string")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise _bad(f"{name}.input_schema", "Input should be an object")
    function = {"name": tool["name"], "parameters": schema}
    description = tool.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise _bad(f"{name}.description", "Input should be a valid string")
        function["description"] = description
    return {"type": "function", "function": function}


def _metadata(metadata, chat: dict) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _bad("metadata", "Input should be an object")
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise _bad("metadata.user_id", "Input should be a valid string")
    if user_id:
        chat["user"] = user_id


def _thinking(thinking, chat: dict, lost: list[ApiError]) -> None:
    """Extended thinking as OpenAI's ``reasoning_effort`` (EFFORTS), for reasoning models."""
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if not isinstance(kind, str):
        raise _bad("thinking", "Input should be an object with a type (enabled or disabled)")
    if kind == "disabled":
        return
    if kind != "enabled":  # a later kind of Anthropic's: only its servers know it
        lost.append(_bad("thinking.type", "Input should be 'enabled' or 'disabled'"))
        return
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < 1:
        raise _bad("thinking.budget_tokens", "Input should be an integer of at least 1")
    chat["reasoning_effort"] = next((e for bound, e in EFFORTS if budget < bound), "high")


def prompt_estimate(chat: dict) -> int:
    """count_tokens' answer: the gateway's prompt estimate, tool definitions and calls too."""
    extra = [chat.get("tools")]
    extra += [m.get("tool_calls") for m in chat["messages"] if m.get("tool_calls")]
    return estimate_prompt(chat) + sum(estimate_tokens(json.dumps(x)) for x in extra if x)
