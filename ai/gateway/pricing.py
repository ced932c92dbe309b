"""Tokens and money: what a request used or may use, and what it costs.

Owns the ``Usage`` of a request (read from the upstream's usage block, else
estimated), the upper bounds reservations are made of, and cost. Money on the
gateway is one unit end to end: integer micro-credits (millionths of a
credit, ``orgs.services.to_micro``), turned back into Decimal credits only
where a row is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from ..selectors import ModelInfo

MAX_TOKENS = 2**31 - 1  # what a UsageEvent's token columns hold
MICRO_PER_CREDIT = Decimal(1_000_000)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    is_estimated: bool = False


def usage_from_block(block: dict | None) -> Usage | None:
    """The upstream's own usage block, if it sent a sensible one."""
    if not isinstance(block, dict):
        return None
    prompt, completion = block.get("prompt_tokens"), block.get("completion_tokens", 0)
    if not all(
        isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_TOKENS
        for n in (prompt, completion)
    ):
        return None  # absent, or not a count we could store: estimated instead
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def cost_micro(model: ModelInfo, usage: Usage) -> int:
    """What ``usage`` costs on ``model``, in micro-credits (prices are per million tokens)."""
    micro = (
        usage.prompt_tokens * model.input_price_per_million
        + usage.completion_tokens * model.output_price_per_million
        + usage.images * model.price_per_image * MICRO_PER_CREDIT
    )
    return int(micro.to_integral_value())


# --- Estimates (no usage block) ------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English."""
    return (len(text) + 3) // 4


def estimate_prompt(body: dict) -> int:
    """A prompt estimate from the request body: messages, prompt or input."""
    parts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return max(1, sum(estimate_tokens(p) for p in parts))


def reply_usage(payload: dict, body: dict, *, counts_images: bool) -> Usage:
    """The usage of a JSON reply: its usage block, else an estimate from its text."""
    usage = usage_from_block(payload.get("usage"))
    if usage is None:
        usage = Usage(
            prompt_tokens=estimate_prompt(body),
            completion_tokens=estimate_tokens(_reply_text(payload)),
            is_estimated=True,
        )
    usage.images = len(payload.get("data") or ()) if counts_images else 0
    return usage


def estimated_usage(body: dict, completion_tokens: int = 0) -> Usage:
    """An answer without a usage block (a stream counts a token per content event)."""
    return Usage(
        prompt_tokens=estimate_prompt(body), completion_tokens=completion_tokens, is_estimated=True
    )


def _reply_text(payload: dict) -> str:
    """The generated text of a chat or text completion."""
    parts = []
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            text = choice.get("text") or (
                message.get("content") if isinstance(message, dict) else ""
            )
            parts.append(text if isinstance(text, str) else "")
    return "".join(parts)


# --- Upper bounds (reservations) -------------------------------------------------------
#
# Reservations need an upper bound on a prompt, not a guess. A token of a
# byte-level BPE tokenizer (GPT, Llama 3, Qwen, Mistral's Tekken) covers at
# least one UTF-8 byte, so a text never has more tokens than bytes: one per
# character for ASCII. A chat template adds a few special tokens around each
# message and before the reply. An image, audio or file part has no bound the
# gateway can see without decoding it: it is reserved at a fixed allowance.
MESSAGE_OVERHEAD = 8
REPLY_OVERHEAD = 8
MEDIA_PART_TOKENS = 2048
# Fields a template renders into the prompt as JSON (tool definitions and schemas).
JSON_PROMPT_FIELDS = ("tools", "functions", "tool_choice", "response_format")


def reserved_amounts(model: ModelInfo, body: dict, route_name: str) -> tuple[int, int]:
    """Tokens and micro-credits to reserve before the call: at least what it can use.

    A prompt bound and every output the request asks for. Reads only fields
    ``validation.bounds_check`` has checked.
    """
    prompt = prompt_bound(body)
    if route_name == "images.generations":
        # An image request records its prompt's tokens too (an estimate, without a usage block).
        usage = Usage(prompt_tokens=prompt, images=body.get("n") or 1)
        return prompt, cost_micro(model, usage)
    output = 0 if route_name == "embeddings" else _output_bound(model, body)
    return prompt + output, cost_micro(model, Usage(prompt_tokens=prompt, completion_tokens=output))


def _output_bound(model: ModelInfo, body: dict) -> int:
    """Each of the n (or best_of) outputs: the larger max field, else the model's limit."""
    asked = [body[name] for name in ("max_tokens", "max_completion_tokens") if body.get(name)]
    each = max(asked) if asked else model.max_output_tokens
    each = each or settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS
    return each * max(body.get("n") or 1, body.get("best_of") or 1)


def bound_tokens(text: str) -> int:
    """At most as many tokens as UTF-8 bytes (``isascii`` is O(1) in CPython)."""
    return len(text) if text.isascii() else len(text.encode())


def prompt_bound(body: dict) -> int:
    """An upper bound on the prompt's tokens (text parts), for reservations."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        total += REPLY_OVERHEAD + sum(_message_bound(message) for message in messages)
    for name in ("prompt", "input", "suffix"):
        total += _items_bound(body.get(name))
    for name in JSON_PROMPT_FIELDS:
        if body.get(name) is not None:
            total += bound_tokens(json.dumps(body[name]))
    return max(1, total)


def _message_bound(message) -> int:
    """A message's role, name, content, tool calls and so on, plus its template tokens."""
    if not isinstance(message, dict):
        return MESSAGE_OVERHEAD + bound_tokens(json.dumps(message))
    total = MESSAGE_OVERHEAD
    for key, value in message.items():
        if isinstance(value, str):
            total += bound_tokens(value)
        elif key == "content" and isinstance(value, list):
            total += sum(_part_bound(part) for part in value)
        elif value is not None:
            total += bound_tokens(json.dumps(value))
    return total


def _part_bound(part) -> int:
    if isinstance(part, str):
        return bound_tokens(part)
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return bound_tokens(part["text"])
    return MEDIA_PART_TOKENS


def _items_bound(value) -> int:
    """``prompt`` or ``input``: a text, texts, token ids, lists of token ids, or messages."""
    if isinstance(value, str):
        return bound_tokens(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += bound_tokens(item)
        elif isinstance(item, list):
            total += len(item)  # token ids
        elif isinstance(item, dict):
            total += _message_bound(item)
        else:
            total += 1  # one token id
    return total
