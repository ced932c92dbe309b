"""A chat completion stream as Anthropic's Messages events.

``message_start`` and a ``ping`` first; then each reasoning text, text or tool
call of the chat chunks as a content block (``content_block_start``,
``content_block_delta`` with ``thinking_delta`` (then an empty ``signature_delta``),
``text_delta`` or ``input_json_delta``, ``content_block_stop``); at the
upstream's ``[DONE]``, ``message_delta`` (stop reason and usage) and
``message_stop``. An error event (the gateway's, or the upstream's) ends the
stream as ``event: error``. Each chat chunk is parsed: translation needs it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from ..pricing import Usage, usage_from_block
from ..responses_output import reasoning_of
from .reply import error_type, stop_of, usage_block

DONE = b"[DONE]"


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


class MessageStream:
    """The state of one translated stream: its open block, tool calls and usage."""

    def __init__(self, *, chat: dict, message_id: str, model: str, prompt_estimate: int) -> None:
        self.chat, self.message_id, self.model = chat, message_id, model
        self.prompt_estimate = prompt_estimate
        self.index = -1  # the open content block's index, or the last one's
        self.open: str | None = None  # "thinking", "text" or "tool_use" while a block is open
        self.tools: dict[int, int] = {}  # the chat tool call index -> its block index
        self.stop: tuple[str, str | None] | None = None
        self.usage: Usage | None = None  # the upstream's, read by the gateway's one reader
        self.content_events = 0
        self.is_done = False

    def start(self) -> list[bytes]:
        usage = usage_block(Usage(prompt_tokens=self.prompt_estimate))
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [sse("message_start", {"type": "message_start", "message": message}), PING]

    def translate(self, event: bytes) -> list[bytes]:
        """The Anthropic events for one chat event (none after the stream ended)."""
        data = event.partition(b"data:")[2].strip()
        if self.is_done or not data:
            return []
        if data == DONE:
            return self.finish()
        try:
            chunk = json.loads(data)
        except ValueError:
            return []
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and not chunk.get("choices"):
            return [self.error(chunk["error"])]
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_block(chunk["usage"]) or self.usage
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        return self._choice(choice) if isinstance(choice, dict) else []

    def _choice(self, choice: dict) -> list[bytes]:
        out: list[bytes] = []
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if thinking := reasoning_of(delta):
            out += self._thinking(thinking)
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._text(text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out += self._tool_call(call)
        if choice.get("finish_reason"):
            self.stop = stop_of(choice, self.chat)
        return out

    def _text(self, text: str) -> list[bytes]:
        out = [] if self.open == "text" else self._open({"type": "text", "text": ""}, "text")
        self.content_events += 1
        delta = {"type": "text_delta", "text": text}
        return out + [_delta(self.index, delta)]

    def _thinking(self, text: str) -> list[bytes]:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        out = [] if self.open == "thinking" else self._open(block, "thinking")
        self.content_events += 1
        return out + [_delta(self.index, {"type": "thinking_delta", "thinking": text})]

    def _tool_call(self, call: dict) -> list[bytes]:
        position = call.get("index") if isinstance(call.get("index"), int) else 0
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        out = []
        if position not in self.tools:
            block = {
                "type": "tool_use",
                "id": call.get("id") if isinstance(call.get("id"), str) else "",
                "name": function.get("name") if isinstance(function.get("name"), str) else "",
                "input": {},
            }
            out = self._open(block, "tool_use")
            self.tools[position] = self.index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.content_events += 1
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_delta(self.tools[position], delta))
        return out

    def _open(self, block: dict, kind: str) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return out + [sse("content_block_start", start)]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        # A thinking block ends with its signature: none from a chat upstream (SDKs read it).
        out = [_delta(self.index, SIGNATURE)] if self.open == "thinking" else []
        self.open = None
        stop = {"type": "content_block_stop", "index": self.index}
        return out + [sse("content_block_stop", stop)]

    def finish(self) -> list[bytes]:
        """The closing events, once the upstream's stream is whole."""
        self.is_done = True
        stop_reason, stop_sequence = self.stop or ("end_turn", None)
        if self.tools:
            stop_reason = "tool_use"
        usage = self.usage or Usage(
            prompt_tokens=self.prompt_estimate, completion_tokens=self.content_events
        )
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage_block(usage),
        }
        return [*self._close(), sse("message_delta", delta), MESSAGE_STOP]

    def error(self, error) -> bytes:
        """The stream's last event: an error (the gateway's envelope, or the upstream's)."""
        self.is_done = True
        message = error.get("message") if isinstance(error, dict) else None
        inner = {
            "type": error_type(502),
            "message": message if isinstance(message, str) else "The upstream failed mid-stream.",
        }
        return sse("error", {"type": "error", "error": inner})


def _delta(index: int, delta: dict) -> bytes:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


PING = sse("ping", {"type": "ping"})
SIGNATURE = {"type": "signature_delta", "signature": ""}
MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


async def message_events(
    batches: AsyncIterator[list[bytes]], translation: MessageStream
) -> AsyncIterator[list[bytes]]:
    """The gateway's chat stream (``Stream.batches``) as batches of Anthropic events.

    Closing this closes the chat stream, whose end queues the usage event.
    """
    try:
        yield translation.start()
        async for batch in batches:
            out = [piece for event in batch for piece in translation.translate(event)]
            if out:
                yield out
        if not translation.is_done:
            yield [translation.error({"message": "The upstream ended the stream early."})]
    finally:
        await batches.aclose()
