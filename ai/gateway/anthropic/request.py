"""Anthropic Messages requests as OpenAI chat completion bodies (pure; no I/O).

``chat_body`` checks a Messages body and builds the chat body sent upstream;
``prompt_estimate`` is count_tokens' answer. Field names in error messages
follow Anthropic's dotted style (``messages.0.content.1.text``).

Choices (README, "Anthropic Messages"): ``top_k`` is passed on as ``top_k``
(llama.cpp and vLLM read it; an upstream that refuses it answers 400);
``metadata.user_id`` becomes ``user``; a tool_result with ``is_error`` reads
"Error: ..."; thinking blocks of earlier assistant turns are dropped (no
upstream here returns signed thinking); server tools and document blocks are
refused; other top-level fields are ignored.
"""

from __future__ import annotations

import json

from panel.errors import InvalidRequest

from ..pricing import estimate_prompt, estimate_tokens

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
DROPPED_BLOCKS = ("thinking", "redacted_thinking")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {problem}", param=param)


def chat_body(body: dict, *, counting: bool = False) -> dict:
    """The chat completion body for a Messages body (``counting``: count_tokens' body)."""
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
    chat["messages"] = [*_system(body.get("system")), *_messages(body["messages"])]
    _sampling(body, chat)
    _tools(body, chat)
    _metadata(body.get("metadata"), chat)
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


def _messages(messages) -> list[dict]:
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
            chat.extend(_user_blocks(content, f"{name}.content"))
        else:
            chat.append(_assistant_blocks(content, f"{name}.content"))
    return chat


def _user_blocks(blocks: list, name: str) -> list[dict]:
    """Tool results become tool messages, first; the other blocks one user message."""
    tools, parts = [], []
    for index, block in enumerate(blocks):
        where = f"{name}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_result":
            message, images = _tool_result(block, where)
            tools.append(message)
            parts.extend(images)
        elif kind in DROPPED_BLOCKS:
            continue
        else:
            raise _bad(f"{where}.type", f"block type {kind!r} is not supported here")
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


def _image(block: dict, name: str) -> dict:
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
    else:
        raise _bad(f"{name}.source.type", "Input should be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict, name: str) -> tuple[dict, list[dict]]:
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
                images.append(_image(part, f"{name}.content.{index}"))
            else:
                raise _bad(f"{name}.content.{index}.type", "Input should be 'text' or 'image'")
    elif content is not None:
        raise _bad(f"{name}.content", "Input should be a valid string or a list of blocks")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad(f"{name}.is_error", "Input should be a valid boolean")
    text = "\n".join(texts)
    if is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _assistant_blocks(blocks: list, name: str) -> dict:
    parts, calls = [], []
    for index, block in enumerate(blocks):
        where = f"{name}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind in DROPPED_BLOCKS:
            continue
        else:
            raise _bad(f"{where}.type", f"block type {kind!r} is not supported here")
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


def _tools(body: dict, chat: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "Input should be a valid list")
        if tools:
            chat["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
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


def _tool(tool, name: str) -> dict:
    if not isinstance(tool, dict):
        raise _bad(name, "Input should be an object")
    if tool.get("type") not in (None, "custom"):
        raise _bad(f"{name}.type", "only client tools (name, input_schema) are supported")
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


def prompt_estimate(chat: dict) -> int:
    """count_tokens' answer: the gateway's prompt estimate, tool definitions and calls too."""
    extra = [chat.get("tools")]
    extra += [m.get("tool_calls") for m in chat["messages"] if m.get("tool_calls")]
    return estimate_prompt(chat) + sum(estimate_tokens(json.dumps(x)) for x in extra if x)
