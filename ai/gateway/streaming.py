"""Step 6 for streams: split upstream SSE into events and pass them on as bytes.

Events are not re-serialised. Only the ``model`` value is rewritten (a regex on
the raw bytes), and only events that mention ``"usage"`` (or llama.cpp's
``"timings"``) are parsed, to read the usage block and to drop the usage-only
chunk unless the client asked for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from panel import fastjson
from panel.errors import ApiError

from . import http1
from .pricing import Usage, usage_from_block

MODEL_RE = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
CONTENT_RE = re.compile(rb'"(?:content|text)"\s*:\s*"(?:[^"\\]|\\.)')
DONE = b"data: [DONE]"
# OpenAI sends "usage": null in every chunk of a stream that asked for usage: no block.
USAGE_NULL_RE = re.compile(rb'"usage"\s*:\s*null')


async def sse_batches(response: http1.Response) -> AsyncIterator[list[bytes]]:
    """The complete SSE events (each ending in a blank line) of each read, as they arrive.

    Events that arrive together are passed on together, in one write to the client.
    """
    buffer = b""
    async for data in response.content.iter_any():
        buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
        events, start = [], 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            events.append(buffer[start : end + 2])
            start = end + 2
        buffer = buffer[start:]
        if events:
            yield events
    if buffer.strip():
        yield [buffer]


def error_event(error: ApiError) -> bytes:
    """An error as the last event of a stream, in the API's error envelope."""
    return b"data: " + json.dumps(error.envelope()).encode() + b"\n\n"


def event_text(event: bytes) -> str:
    """The content a chat or text completion event adds (parsed: for readers, not the relay)."""
    data = event.partition(b"data:")[2].strip()
    if not data or data == b"[DONE]" or not CONTENT_RE.search(data):
        return ""
    try:
        chunk = json.loads(data)
    except ValueError:
        return ""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    pieces = []
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            pieces.append(text if isinstance(text, str) else "")
    return "".join(pieces)


def _counts(event: bytes) -> bool:
    """Whether an event may carry usage: a usage block, or llama.cpp's timings.

    OpenAI's ``"usage": null`` in every chunk is none: parsing each of those chunks (as
    before issue 20) cost a JSON parse an event and found nothing.
    """
    if b'"timings"' in event:
        return True
    if b'"usage"' not in event:
        return False
    return event.count(b'"usage"') > 1 or USAGE_NULL_RE.search(event) is None


class EventRelay:
    """Per-stream state: rewrites events and tallies what was delivered."""

    __slots__ = (
        "include_usage",
        "usage",
        "content_events",
        "saw_done",
        "_block",
        "_timings",
        "_model_plain",
        "_upstream_model",
    )

    def __init__(self, *, public_model: str, include_usage: bool) -> None:
        self._model_plain = b'"model":' + json.dumps(public_model).encode()
        # The upstream's ``"model":"..."`` as it wrote it in an event: its next events
        # carry the same bytes, found with bytes.find instead of the regex (issue 20).
        self._upstream_model: bytes | None = None
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.content_events = 0
        self.saw_done = False
        # The last usage block and llama.cpp timings seen: they may come in one event or two.
        self._block: dict | None = None
        self._timings: dict | None = None

    def error_event(self, error: ApiError) -> bytes:
        return error_event(error)

    def relay_batch(self, events: list[bytes]) -> list[bytes]:
        """The events to send on for a batch of events (possibly none).

        ``relay`` for each event, its steps written out in one loop (two calls an event
        fewer: ~30 % of a 23-event batch, issue 20): the ``[DONE]`` test, usage, the
        content count and the model's rename.
        """
        out = []
        plain = self._model_plain
        for event in events:
            if event.startswith(DONE):
                self.saw_done = True
                out.append(event)
                continue
            if (
                (b'"usage"' in event or b'"timings"' in event)
                and _counts(event)
                and self._read_usage(event)
                and not self.include_usage
            ):
                continue
            if CONTENT_RE.search(event) is not None:
                self.content_events += 1
            seen = self._upstream_model
            if seen is not None:
                at = event.find(b'"model"')
                if at >= 0 and event.startswith(seen, at):
                    out.append(event[:at] + plain + event[at + len(seen) :])
                    continue
            out.append(self._renamed(event))
        return out

    def relay(self, event: bytes) -> bytes | None:
        """The event to send on, or None to drop it."""
        out = self.relay_batch([event])
        return out[0] if out else None

    def _renamed(self, event: bytes) -> bytes:
        """The event with its first ``"model": "..."`` value the public model's name.

        As ``MODEL_RE.sub(..., count=1)``: when the event's first ``"model"`` is followed by
        the very bytes the upstream wrote last time, that is the regex's first match (its
        string ends at the first unescaped quote), and it is replaced by slicing.
        """
        seen = self._upstream_model
        if seen is not None:
            at = event.find(b'"model"')
            if at >= 0 and event.startswith(seen, at):
                return event[:at] + self._model_plain + event[at + len(seen) :]
        match = MODEL_RE.search(event)
        if match is None:
            return event
        self._upstream_model = match.group()
        return event[: match.start()] + self._model_plain + event[match.end() :]

    def _read_usage(self, event: bytes) -> bool:
        """Record a usage block (and timings); True when the event is a usage-only chunk."""
        data = event.partition(b"data:")[2].strip()
        try:
            chunk = fastjson.loads(data)
        except (ValueError, RecursionError):
            return False
        if not isinstance(chunk, dict):
            return False
        if isinstance(chunk.get("timings"), dict):
            self._timings = chunk["timings"]
        block = chunk.get("usage")
        if isinstance(block, dict):
            self._block = block
        usage = usage_from_block(self._block, self._timings)
        if usage is None:
            return False
        self.usage = usage
        return isinstance(block, dict) and not chunk.get("choices")
