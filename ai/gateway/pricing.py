"""Tokens and money: what a request used or may use, and what it costs.

Owns the ``Usage`` of a request (read from the upstream's usage block, else
estimated), the upper bounds reservations are made of, and cost. Money on the
gateway is one unit end to end: integer micro-credits (millionths of a
credit, ``orgs.services.to_micro``), turned back into Decimal credits only
where a row is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from ..selectors import ModelInfo

MAX_TOKENS = 2**31 - 1  # what a UsageEvent's token columns hold
MICRO_PER_CREDIT = Decimal(1_000_000)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Usage:
    """The canonical usage record of a request, whatever protocol reported it.

    ``prompt_tokens`` is every input token, cache reads and writes included (so
    it reads as OpenAI's ``prompt_tokens``); ``cache_read_tokens`` and
    ``cache_write_tokens`` are parts of it, ``uncached_tokens`` the rest.
    ``reasoning_tokens`` is part of ``completion_tokens``. Never negative.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    is_estimated: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_tokens(self) -> int:
        return self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens


def _count(value) -> int | None:
    """A token count we could store, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def _part(block: dict, *paths: tuple[str, str]) -> int:
    """The first detail count present (``group.name``, or top-level ``name`` for group ""), else 0."""
    for group, name in paths:
        details = block.get(group) if group else block
        value = _count(details.get(name)) if isinstance(details, dict) else None
        if value is not None:
            return value
    return 0


def _has_cached_tokens(block: dict) -> bool:
    details = block.get("prompt_tokens_details")
    return isinstance(details, dict) and _count(details.get("cached_tokens")) is not None


def usage_from_block(block: dict | None, timings: dict | None = None) -> Usage | None:
    """The canonical usage of an upstream's usage block, if it sent a sensible one.

    The one reader of every protocol's block:

    - OpenAI chat: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``
      (and the cache writes: OpenRouter's ``cache_write_tokens``, LiteLLM's
      ``cache_creation_tokens`` or top-level ``cache_creation_input_tokens``, all
      parts of ``prompt_tokens``, never added to it: LiteLLM #9812);
      ``completion_tokens_details.reasoning_tokens`` is part of ``completion_tokens``.
      llama.cpp's llama-server tells its prompt cache's reuse in ``timings.cache_n``
      beside the block (``timings``, from the same reply or stream): a part of
      ``prompt_tokens``, read as the cache reads when the block has no ``cached_tokens``.
    - Responses: ``input_tokens`` includes ``input_tokens_details.cached_tokens``;
      ``output_tokens_details.reasoning_tokens`` is part of ``output_tokens``.
    - Anthropic: ``input_tokens`` excludes ``cache_read_input_tokens`` and
      ``cache_creation_input_tokens``, which are added to make the prompt.

    A part larger than the total it belongs to is clamped to it (and logged):
    never a negative uncached count, never a token billed twice.
    """
    if not isinstance(block, dict):
        return None
    if "prompt_tokens" in block:  # OpenAI chat (and text) completions
        prompt, completion = (
            _count(block.get("prompt_tokens")),
            _count(block.get("completion_tokens", 0)),
        )
        if prompt is None or completion is None:
            return None
        read = _part(
            block, ("prompt_tokens_details", "cached_tokens"), ("", "cache_read_input_tokens")
        )
        if not read and not _has_cached_tokens(block) and isinstance(timings, dict):
            read = _part(timings, ("", "cache_n"))
        write = _part(
            block,
            ("prompt_tokens_details", "cache_write_tokens"),
            ("prompt_tokens_details", "cache_creation_tokens"),
            ("", "cache_creation_input_tokens"),
        )
        reasoning = _part(block, ("completion_tokens_details", "reasoning_tokens"))
    elif "input_tokens" in block:
        total, completion = _count(block.get("input_tokens")), _count(block.get("output_tokens", 0))
        if total is None or completion is None:
            return None
        reasoning = _part(block, ("output_tokens_details", "reasoning_tokens"))
        if "cache_read_input_tokens" in block or "cache_creation_input_tokens" in block:
            # Anthropic: the cache's tokens come on top of input_tokens.
            read = _part(block, ("", "cache_read_input_tokens"))
            write = _part(block, ("", "cache_creation_input_tokens"))
            prompt = _count(total + read + write)
            if prompt is None:
                return None
        else:  # Responses
            prompt = total
            read = _part(block, ("input_tokens_details", "cached_tokens"))
            write = _part(block, ("input_tokens_details", "cache_write_tokens"))
    else:
        return None  # absent: estimated instead
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
    usage.cache_read_tokens = min(read, prompt)
    usage.cache_write_tokens = min(write, prompt - usage.cache_read_tokens)
    usage.reasoning_tokens = min(reasoning, completion)
    if (read, write, reasoning) != (
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    ):
        log.warning("usage block parts exceed their totals, clamped: %s", block)
    return usage


def prompt_price(model: ModelInfo) -> Decimal:
    """The highest price a prompt token may cost on ``model`` (reservations' bound)."""
    return max(model.input_price_per_million, *_cache_prices(model))


def _cache_prices(model: ModelInfo) -> tuple[Decimal, Decimal]:
    """The cache read and write prices: the input price where the model sets none."""
    read, write = model.cached_input_price_per_million, model.cache_write_price_per_million
    return (
        model.input_price_per_million if read is None else read,
        model.input_price_per_million if write is None else write,
    )


def cost_micro(model: ModelInfo, usage: Usage) -> int:
    """What ``usage`` costs on ``model``, in micro-credits (prices are per million tokens)."""
    micro = (
        usage.uncached_tokens * model.input_price_per_million
        + usage.completion_tokens * model.output_price_per_million
    )
    # Most replies have no cache parts and no images: their Decimal products are skipped.
    if usage.cache_read_tokens or usage.cache_write_tokens:
        read_price, write_price = _cache_prices(model)
        micro += usage.cache_read_tokens * read_price + usage.cache_write_tokens * write_price
    if usage.images:
        micro += usage.images * model.price_per_image * MICRO_PER_CREDIT
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
    timings = payload.get("timings")  # llama.cpp's
    usage = usage_from_block(payload.get("usage"), timings if isinstance(timings, dict) else None)
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
    # The prompt is reserved at its dearest price: a cache write may cost more than input.
    micro = prompt * prompt_price(model) + output * model.output_price_per_million
    return prompt + output, int(micro.to_integral_value())


def _output_bound(model: ModelInfo, body: dict) -> int:
    """Each of the n (or best_of) outputs: the larger max field, else the model's limit."""
    asked = [body[name] for name in ("max_tokens", "max_completion_tokens") if body.get(name)]
    each = max(asked) if asked else model.max_output_tokens
    each = each or settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS
    return each * max(body.get("n") or 1, body.get("best_of") or 1)


def bound_tokens(text: str) -> int:
    """At most as many tokens as UTF-8 bytes (``isascii`` is O(1) in CPython).

    A lone surrogate (JSON's ``"\\ud800"``, which the json module parses) counts its
    three bytes rather than failing the request.
    """
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


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
