"""Step 6 for streams: upstream SSE passed on as bytes, a read's events together.

Events are not re-serialised. Only the ``model`` value is rewritten (on the raw
bytes), and only events that mention ``"usage"`` (or llama.cpp's ``"timings"``)
are parsed, to read the usage block and to drop the usage-only chunk unless the
client asked for it. A read's events stay one bytes object (``Batch``), split into
events only for a reader that wants them one by one.
"""

from __future__ import annotations

import json
import re

from panel import fastjson
from panel.errors import ApiError

from . import http1
from .pricing import Usage, usage_from_block

# On the relay's path a bytes test is ``find(...) >= 0``, not ``in``: ``in`` first tries the
# needle as an integer (a byte value) and formats the TypeError it gets (~0.1 us, issue 20).
MODEL_RE = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
CONTENT_RE = re.compile(rb'"(?:content|text)"\s*:\s*"(?:[^"\\]|\\.)')
DONE = b"data: [DONE]"
# OpenAI sends "usage": null in every chunk of a stream that asked for usage: no block.
USAGE_NULL_RE = re.compile(rb'"usage"\s*:\s*null')


def _last_boundary(data: bytes, start: int, end: int) -> int:
    """Where the last event that ends before ``end`` ends, splitting ``data[start:]`` into
    events at each blank line, left to right (``start`` when no event ends there).

    ``rfind`` finds the last ``\n\n``; in a longer run of newlines the split pairs them
    from the run's start, so an odd one left over begins the next event.
    """
    pair = data.rfind(b"\n\n", start, end)
    if pair < 0:
        return start
    run = pair
    while run > start and data[run - 1] == 10:  # b"\n"
        run -= 1
    return run + (pair + 2 - run) // 2 * 2


def split_events(data: bytes) -> list[bytes]:
    """The events in ``data``, each ending in its blank line; what is left after the last
    one (a stream's unterminated end) is one more."""
    events, start = [], 0
    while (end := data.find(b"\n\n", start)) >= 0:
        events.append(data[start : end + 2])
        start = end + 2
    if start < len(data):
        events.append(data[start:])
    return events


class Batch:
    """The SSE events that arrived in one read, as the bytes they came in.

    The chat relay (``EventRelay``) works on the bytes as a whole where it can, and the
    fast path writes them as they are (issue 20: splitting a 23-event read into events,
    and joining them again, cost more than the rest of the relay). A reader that wants
    the events one by one iterates: they are split on first use.
    """

    __slots__ = ("data", "_events")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._events: list[bytes] | None = None

    @property
    def events(self) -> list[bytes]:
        if self._events is None:
            self._events = split_events(self.data)
        return self._events

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __bool__(self) -> bool:
        return bool(self.data)

    def __repr__(self) -> str:
        return f"Batch({self.data!r})"


def wire(batch) -> bytes:
    """A batch's bytes on the wire: a ``Batch``'s own, or a list's events joined."""
    return batch.data if type(batch) is Batch else b"".join(batch)


class SSEBatches:
    """The complete SSE events (each ending in a blank line) of each read, as they arrive.

    Events that arrive together are passed on together, in one write to the client. An
    async iterator over the body's ``readany``, not an async generator over its
    ``iter_any``: the relay stops reading at ``[DONE]``, and each async generator left
    suspended was closed by the event loop's finalizer hook, a task and a thread-safe
    wake-up each, two a stream (callgrind, issue 20).
    """

    __slots__ = ("_content", "_buffer", "_ended")

    def __init__(self, response: http1.Response) -> None:
        self._content = response.content
        self._buffer = b""
        self._ended = False

    def __aiter__(self) -> SSEBatches:
        return self

    async def __anext__(self) -> Batch:
        content = self._content
        while not self._ended:
            data = await content.readany()
            if not data:
                self._ended = True
                break
            buffer = self._buffer + (
                data.replace(b"\r\n", b"\n") if data.find(b"\r") >= 0 else data
            )
            end = _last_boundary(buffer, 0, len(buffer))
            if end:
                self._buffer = buffer[end:]
                return Batch(buffer[:end])
            self._buffer = buffer
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            return Batch(rest)
        raise StopAsyncIteration


def sse_batches(response: http1.Response) -> SSEBatches:
    """A response's SSE events, a read's complete events together (``SSEBatches``)."""
    return SSEBatches(response)


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


def _needs_a_look(data: bytes, start: int) -> int:
    """Where the first event of ``data[start:]`` that the relay must look at alone starts
    (``len(data)`` when none does): one with ``[DONE]``, llama.cpp's timings or a usage
    block (OpenAI's ``"usage": null`` in every chunk is none; see ``_counts``)."""
    at = len(data)
    for marker in (DONE, b'"timings"'):
        found = data.find(marker, start, at)
        if found >= 0:
            at = found
    found = data.find(b'"usage"', start, at)
    while found >= 0 and USAGE_NULL_RE.match(data, found) is not None:
        found = data.find(b'"usage"', found + 7, at)
    if found >= 0:
        at = found
    return at if at == len(data) else _last_boundary(data, start, at)


def _counts(event: bytes) -> bool:
    """Whether an event may carry usage: a usage block, or llama.cpp's timings.

    OpenAI's ``"usage": null`` in every chunk is none: parsing each of those chunks (as
    before issue 20) cost a JSON parse an event and found nothing.
    """
    if event.find(b'"timings"') >= 0:
        return True
    if event.find(b'"usage"') < 0:
        return False
    return event.count(b'"usage"') > 1 or USAGE_NULL_RE.search(event) is None


class EventRelay:
    """Per-stream state: rewrites events and tallies what was delivered."""

    __slots__ = (
        "include_usage",
        "usage",
        "saw_done",
        "_counted",
        "_uncounted",
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
        # The content pieces counted so far, and the last read's plain run of events, kept
        # uncounted until the next read or a reader asks (``content_events``).
        self._counted = 0
        self._uncounted = b""
        self.saw_done = False
        # The last usage block and llama.cpp timings seen: they may come in one event or two.
        self._block: dict | None = None
        self._timings: dict | None = None

    def error_event(self, error: ApiError) -> bytes:
        return error_event(error)

    @property
    def content_events(self) -> int:
        """The content pieces relayed (each choice's delta of content or text).

        Only a stream that ends without a usage block is billed by this count (and the
        stream's usage block comes in its last read), so a read's plain run of events is
        counted when the next read comes or when this is asked, not as it is relayed: the
        count of the last read, ~8 us for a 4 KB read (issue 20), is left undone when its
        usage block made it moot. One read's bytes are kept for it at most.
        """
        pending = self._uncounted
        if pending:
            self._uncounted = b""
            self._counted += len(CONTENT_RE.findall(pending))
        return self._counted

    @property
    def content_seen(self) -> bool:
        """Whether any content was relayed yet (the first token's time), without counting."""
        if self._counted:
            return True
        return bool(self._uncounted) and CONTENT_RE.search(self._uncounted) is not None

    def relay_batch(self, events):
        """The events to send on for a batch of events (possibly none).

        A ``Batch`` gives a ``Batch`` back, its plain events relayed as one piece of bytes
        (``_relay_data``); a list of events gives a list. For each event, in one loop (two
        calls an event fewer: ~30 % of a 23-event batch, issue 20): the ``[DONE]`` test,
        usage, the content count and the model's rename.
        """
        if type(events) is Batch:
            return Batch(self._relay_data(events.data))
        out = []
        plain = self._model_plain
        for event in events:
            if event.startswith(DONE):
                self.saw_done = True
                out.append(event)
                continue
            if (
                (event.find(b'"usage"') >= 0 or event.find(b'"timings"') >= 0)
                and _counts(event)
                and self._read_usage(event)
                and not self.include_usage
            ):
                continue
            self._counted += len(CONTENT_RE.findall(event))
            seen = self._upstream_model
            if seen is not None:
                at = event.find(b'"model"')
                if at >= 0 and event.startswith(seen, at):
                    out.append(event.replace(seen, plain))
                    continue
            out.append(self._renamed(event))
        return out

    def _relay_data(self, data: bytes) -> bytes:
        """``relay_batch`` for events as the bytes they came in.

        The run of events between the first (which names the upstream's model, when it is
        not known yet) and the first that needs a look of its own (usage, llama.cpp's
        timings, ``[DONE]``) is relayed as a whole when every ``"model"`` in it is the
        upstream's as it wrote it before: one ``replace`` renames them all, and its content
        is counted later, in one ``findall`` (``content_events``). Each event elsewhere goes
        through the loop above.
        """
        start, out = 0, []
        if self._upstream_model is None:
            start = data.find(b"\n\n") + 2
            if start < 2:
                return b"".join(self.relay_batch(split_events(data)))
            out += self.relay_batch([data[:start]])
        tail = _needs_a_look(data, start)
        if start < tail:
            middle = data[start:tail]
            renamed, seen = middle, self._upstream_model
            models = middle.count(b'"model"')
            if models and seen is not None:
                renamed = middle.replace(seen, self._model_plain)
                grown = len(self._model_plain) - len(seen)
                # Each rename moves the length by ``grown``: all renamed, without a count
                # of ``seen`` (a pass over the read, ~2.5 us for 4 KB).
                if grown:
                    models -= (len(renamed) - len(middle)) // grown
                else:
                    models -= middle.count(seen)
            if not models:
                if self._uncounted:
                    self.content_events  # noqa: B018 (counts the last read's: one kept at most)
                self._uncounted = middle
                out.append(renamed)
            else:
                out += self.relay_batch(split_events(middle))
        if tail < len(data):
            out += self.relay_batch(split_events(data[tail:]))
        return out[0] if len(out) == 1 else b"".join(out)

    def relay(self, event: bytes) -> bytes | None:
        """The event to send on, or None to drop it."""
        out = self.relay_batch([event])
        return out[0] if out else None

    def _renamed(self, event: bytes) -> bytes:
        """The event with the upstream's ``"model": "..."`` the public model's name.

        The first ``"model"`` key (``MODEL_RE``) names the upstream's model, as it writes it:
        every ``"model"`` with those very bytes is renamed (one nested in an echo of the
        request too, which would otherwise show the upstream's name). The bytes are kept,
        so the next events are renamed by ``replace`` without the regex.
        """
        match = MODEL_RE.search(event)
        if match is None:
            return event
        self._upstream_model = seen = match.group()
        return event.replace(seen, self._model_plain)

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
