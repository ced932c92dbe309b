"""An Anthropic Messages stream as OpenAI chat completion chunks (a pipeline StreamRelay).

``message_start`` opens the reply (a chunk with the assistant's role); each
``text_delta`` is a content chunk, each ``thinking_delta`` a ``reasoning_content``
chunk; a ``tool_use`` block opens a tool call (its index, id and name) whose
``input_json_delta`` pieces are its arguments; ``message_delta`` gives the finish
reason; ``message_stop`` ends the reply with the usage chunk (when the client asked
``stream_options.include_usage``) and ``data: [DONE]``. The usage is
``message_start``'s merged with ``message_delta``'s (cumulative counts). An
Anthropic ``error`` event ends the reply: its message is the stream's error event.
"""

from __future__ import annotations

import json

from panel.errors import ApiError, UpstreamError

from ..pricing import Usage, usage_from_block
from ..streaming import DONE, error_event
from .completion import chat_usage, completion_id, finish_reason


def _data(event: bytes) -> dict | None:
    try:
        data = json.loads(event.partition(b"data:")[2])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class ChatChunkRelay:
    """Per-stream state: the open tool calls, the usage blocks merged, the end seen."""

    def __init__(self, *, public_model: str, include_usage: bool, created: int) -> None:
        self.model, self.include_usage, self.created = public_model, include_usage, created
        self.id = completion_id(None)
        self.block: dict = {}  # the usage blocks merged
        self.is_finished = False  # message_delta's usage (the final counts) was read
        self.tools: dict[int, int] = {}  # a tool_use block's index -> its tool call's
        self.failure = ""  # an Anthropic error event's message
        self.content_events = 0
        self.saw_done = False

    @property
    def usage(self) -> Usage | None:
        """The upstream's counts; for a reply cut short, its prompt and a token a delta."""
        usage = usage_from_block(self.block)
        if usage is not None and not self.is_finished:
            usage.completion_tokens = max(usage.completion_tokens, self.content_events)
            usage.is_estimated = True
        return usage

    @property
    def content_seen(self) -> bool:
        return self.content_events > 0

    def relay_batch(self, events: list[bytes]) -> list[bytes]:
        return [chunk for event in events for chunk in self.relay(event)]

    def relay(self, event: bytes) -> list[bytes]:
        data = _data(event)
        kind = data.get("type") if data else None
        if kind == "message_start":
            return self._start(data.get("message"))
        if kind == "content_block_start":
            return self._block(data.get("index"), data.get("content_block"))
        if kind == "content_block_delta":
            return self._delta(data.get("index"), data.get("delta"))
        if kind == "message_delta":
            return self._finish(data)
        if kind == "message_stop":
            return self._stop()
        if kind == "error":
            error = data.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.failure = message if isinstance(message, str) and message else "error"
        return []  # ping, content_block_stop, and what we do not know

    def error_event(self, error: ApiError) -> bytes:
        if self.failure:  # the upstream said why
            error = UpstreamError(f"The upstream failed mid-stream: {self.failure}")
        return error_event(error)

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _merge(self, block) -> None:
        """A later block's counts are cumulative: they replace the earlier (nulls ignored)."""
        if isinstance(block, dict):
            self.block.update({k: v for k, v in block.items() if v is not None})

    def _start(self, message) -> list[bytes]:
        if isinstance(message, dict):
            self.id = completion_id(message.get("id"))
            self._merge(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block(self, index, block) -> list[bytes]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "tool_use":
            position = self.tools[index] = len(self.tools)
            call = {
                "index": position,
                "id": block.get("id") if isinstance(block.get("id"), str) else "",
                "type": "function",
                "function": {"name": block.get("name") or "", "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return self._content("content", block["text"])
        return []

    def _delta(self, index, delta) -> list[bytes]:
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta":
            return self._content("content", delta.get("text"))
        if kind == "thinking_delta":
            return self._content("reasoning_content", delta.get("thinking"))
        if kind == "input_json_delta" and index in self.tools:
            arguments = delta.get("partial_json")
            if not isinstance(arguments, str) or not arguments:
                return []
            self.content_events += 1
            call = {"index": self.tools[index], "function": {"arguments": arguments}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # signature_delta, citations

    def _content(self, field: str, text) -> list[bytes]:
        if not isinstance(text, str) or not text:
            return []
        self.content_events += 1
        return [self._chunk({field: text})]

    def _finish(self, data: dict) -> list[bytes]:
        self._merge(data.get("usage"))
        self.is_finished = True
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        return [self._chunk({}, finish_reason(delta.get("stop_reason")))]

    def _stop(self) -> list[bytes]:
        self.saw_done = True
        out = []
        usage = self.usage
        if self.include_usage and usage is not None:
            chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": chat_usage(usage),
            }
            out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        return [*out, DONE + b"\n\n"]
