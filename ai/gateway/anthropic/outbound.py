"""OpenAI chat completion requests as Anthropic Messages requests (pure; no I/O).

``messages_body`` builds the body an Anthropic-style upstream (``api_style``
anthropic) gets for a chat-protocol call: system and developer messages become
``system``; user and assistant text and ``image_url`` parts (a ``data:`` URL
as a base64 image, an http(s) URL as a url image) become content blocks;
assistant ``tool_calls`` become ``tool_use`` blocks (arguments that are not a
JSON object read as ``{}``); ``tool`` messages become ``tool_result`` blocks in
a user turn; consecutive turns of one role are merged (Anthropic wants them
alternating). ``tools`` (functions) become Anthropic tools, ``tool_choice``
auto/none/required/named becomes auto/none/any/tool, ``parallel_tool_calls:
false`` sets ``disable_parallel_tool_use``. ``max_completion_tokens`` or
``max_tokens`` becomes ``max_tokens`` (required by Anthropic: the model's
``max_output_tokens`` when the client sent neither, else 4096);
``temperature``, ``top_p`` and ``top_k`` go as they are (Anthropic refuses a
temperature above 1 with a 400, relayed); ``stop`` becomes ``stop_sequences``;
``user`` becomes ``metadata.user_id``; ``reasoning_effort`` low/medium/high
turns on ``thinking`` with a budget of 1024/4096/16384 tokens (capped below
``max_tokens``; none when that leaves under 1024), and then temperature and
top_p are left out (Anthropic refuses them with thinking).

Dropped, having no equivalent: ``n``, ``presence_penalty``,
``frequency_penalty``, ``logit_bias``, ``logprobs``, ``top_logprobs``, ``seed``,
``response_format``, ``modalities``, ``audio``, ``prediction``,
``service_tier``, ``store``, ``metadata``, ``stream_options`` (the gateway reads
Anthropic's usage itself), ``functions``/``function_call`` (legacy), message
``name`` fields and every other field. Parts Anthropic cannot take
(``input_audio``, ``file``) and non-function tools are refused (400).
"""

from __future__ import annotations

import json
import re

from panel.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 4096
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
MIN_THINKING_BUDGET = 1024
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
_DATA_URL_RE = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)


def _bad(param: str, problem: str) -> InvalidRequest:
    message = f"'{param}' {problem} (this model's upstream speaks Anthropic's Messages API)."
    return InvalidRequest(message, param=param)


def messages_body(chat: dict, *, model: str, default_max_tokens: int | None = None) -> dict:
    """The Messages body for a chat completion body, sent to ``model`` upstream."""
    system, turns = _turns(chat.get("messages") or [])
    body: dict = {"model": model, "max_tokens": _max_tokens(chat, default_max_tokens)}
    if system:
        body["system"] = system
    body["messages"] = turns
    _sampling(chat, body)
    _tools(chat, body)
    user = chat.get("user")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    if chat.get("stream") is True:
        body["stream"] = True
    return body


def _max_tokens(chat: dict, default: int | None) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = chat.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default or DEFAULT_MAX_TOKENS


# --- Messages -------------------------------------------------------------------------


def _turns(messages: list) -> tuple[str, list[dict]]:
    """The system text, and the user/assistant turns (one role's run merged into one turn)."""
    system: list[str] = []
    turns: list[dict] = []
    for index, message in enumerate(messages):
        name = f"messages[{index}]"
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(message.get("content"), name))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), name)
        elif role == "assistant":
            blocks = _assistant_blocks(message, name)
        elif role == "tool":
            blocks, role = [_tool_result(message, name)], "user"
        else:
            raise _bad(f"{name}.role", "must be system, developer, user, assistant or tool")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _texts(content, name: str) -> list[str]:
    """The texts of a string or a list of text parts (empty ones left out)."""
    if isinstance(content, str):
        return [content] if content else []
    texts = []
    for index, part in enumerate(content or ()):
        if part.get("type") != "text":
            raise _bad(f"{name}.content[{index}].type", "must be 'text' here")
        if part.get("text"):
            texts.append(part["text"])
    return texts


def _user_blocks(content, name: str) -> list[dict]:
    if isinstance(content, str) or content is None:
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for index, part in enumerate(content):
        kind, where = part.get("type"), f"{name}.content[{index}]"
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), where))
        else:
            raise _bad(f"{where}.type", "must be 'text' or 'image_url'")
    return blocks


def _image(image, name: str) -> dict:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _bad(f"{name}.image_url.url", "must be a string")
    if match := _DATA_URL_RE.match(url):
        source = {"type": "base64", "media_type": match[1], "data": match[2]}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise _bad(f"{name}.image_url.url", "must be an http(s) URL or a base64 data: URL")
    return {"type": "image", "source": source}


def _assistant_blocks(message: dict, name: str) -> list[dict]:
    blocks = [{"type": "text", "text": t} for t in _texts(message.get("content"), name)]
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _bad(f"{name}.tool_calls", "must be an array")
    for index, call in enumerate(calls or ()):
        blocks.append(_tool_use(call, f"{name}.tool_calls[{index}]"))
    return blocks


def _tool_use(call, name: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _bad(f"{name}.function.name", "must be a string")
    if not isinstance(call.get("id"), str):
        raise _bad(f"{name}.id", "must be a string")
    return {
        "type": "tool_use",
        "id": call["id"],
        "name": function["name"],
        "input": _arguments(function.get("arguments")),
    }


def _arguments(arguments) -> dict:
    """A tool call's arguments (JSON text) as the object Anthropic wants; {} when not one."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _tool_result(message: dict, name: str) -> dict:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise _bad(f"{name}.tool_call_id", "must be a string")
    text = "\n".join(_texts(message.get("content"), name))
    block = {"type": "tool_result", "tool_use_id": call_id}
    if text:
        block["content"] = text
    return block


# --- Sampling and tools ---------------------------------------------------------------


def _sampling(chat: dict, body: dict) -> None:
    thinking = _thinking(chat.get("reasoning_effort"), body["max_tokens"])
    if thinking:
        body["thinking"] = thinking
    for field in ("top_k",) if thinking else ("temperature", "top_p", "top_k"):
        if chat.get(field) is not None:
            body[field] = chat[field]
    stop = chat.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        body["stop_sequences"] = stop


def _thinking(effort, max_tokens: int) -> dict | None:
    budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        return None
    budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _tools(chat: dict, body: dict) -> None:
    tools = chat.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools", "must be an array")
    if tools:
        body["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _tool_choice(chat.get("tool_choice"))
    if chat.get("parallel_tool_calls") is False and tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None and tools:
        body["tool_choice"] = choice


def _tool(tool, name: str) -> dict:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise _bad(f"{name}.type", "must be 'function'")
    if not isinstance(function.get("name"), str):
        raise _bad(f"{name}.function.name", "must be a string")
    schema = function.get("parameters")
    out = {
        "name": function["name"],
        "input_schema": schema if isinstance(schema, dict) else {"type": "object"},
    }
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _tool_choice(choice) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return {"type": TOOL_CHOICES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise _bad("tool_choice", "must be auto, none, required or a named function")
