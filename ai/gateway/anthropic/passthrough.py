"""Anthropic Messages passed through to upstreams that speak them (``api_style`` anthropic).

The client's body goes upstream as sent but for ``model``; the reply comes back
as sent but for ``model`` (the public name). A stream's events are relayed as
they arrive: only ``message_start`` (its model, its usage) and ``message_delta``
(the final usage) are parsed; ``message_stop`` ends the reply.
"""

from __future__ import annotations

import json
import re

from panel.errors import ApiError

from ...models import ApiStyle
from ...selectors import UpstreamInfo
from ..pricing import Usage, usage_from_block
from ..streaming import MODEL_RE
from .reply import error_type
from .stream import sse

MESSAGES_PATH = "messages"
START = b"message_start"
DELTA = b"message_delta"
STOP = b"message_stop"
CONTENT = b"content_block_delta"
_EVENT_RE = re.compile(rb"^event:\s*(\S+)", re.MULTILINE)


def speaks_messages(upstream: UpstreamInfo) -> bool:
    return upstream.api_style == ApiStyle.ANTHROPIC


class MessagesRelay:
    """Per-stream state: the model rewritten, the usage blocks merged, the end seen."""

    __slots__ = ("model_bytes", "block", "usage", "content_events", "saw_done")

    def __init__(self, public_model: str) -> None:
        # Escaped once here, since re.sub reads backslashes in a replacement.
        self.model_bytes = (b'"model":' + json.dumps(public_model).encode()).replace(b"\\", b"\\\\")
        self.block: dict = {}
        self.usage: Usage | None = None
        self.content_events = 0
        self.saw_done = False

    @property
    def content_seen(self) -> bool:
        return self.content_events > 0

    def relay_batch(self, events: list[bytes]) -> list[bytes]:
        return [self.relay(event) for event in events]

    def relay(self, event: bytes) -> bytes:
        match = _EVENT_RE.search(event)
        kind = match.group(1) if match else b""
        if kind == CONTENT:
            self.content_events += 1
        elif kind == START:
            data = self._data(event)
            message = data.get("message") if isinstance(data, dict) else None
            if isinstance(message, dict):
                self._merge(message.get("usage"))
            return MODEL_RE.sub(self.model_bytes, event, count=1)
        elif kind == DELTA:
            self._merge((self._data(event) or {}).get("usage"))
        elif kind == STOP:
            self.saw_done = True
        return event

    def error_event(self, error: ApiError) -> bytes:
        inner = {"type": error_type(error.status_code), "message": error.message}
        return sse("error", {"type": "error", "error": inner})

    @staticmethod
    def _data(event: bytes) -> dict | None:
        try:
            data = json.loads(event.partition(b"data:")[2])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _merge(self, block) -> None:
        """A delta's counts are cumulative: they replace the start's (nulls ignored)."""
        if isinstance(block, dict):
            self.block.update({k: v for k, v in block.items() if v is not None})
            self.usage = usage_from_block(self.block) or self.usage
