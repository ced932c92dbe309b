"""The stream relay skips OpenAI's per-chunk ``"usage": null``, and renames the model
without the regex when the upstream writes it as before (issue 20).

Before, every event that mentioned "usage" was parsed as JSON, to look for a usage block;
OpenAI streams that asked for usage carry ``"usage": null`` in every chunk, so every chunk
was parsed. ``streaming._counts`` now passes those over. Whatever the events and however
the reads split them, the relay must send the same events and tally the same usage as
with the old rule. The model's name, once the upstream's ``"model":"..."`` bytes are
known, is found with ``bytes.find``: whatever the events, the result must be the regex's
(its first match in an event, and every other copy of those bytes in the event).

A read's events now stay the bytes they came in (``streaming.Batch``): the relay renames
and counts the plain run between the first event and the last ones (usage, ``[DONE]``)
as a whole. Whatever the bytes and however the reads cut them, that must send the same
bytes and tally the same as the relay event by event, and ``sse_batches`` must split
them into the events the old loop split them into.
"""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ai.gateway import streaming
from ai.gateway.streaming import Batch, EventRelay


def chunk(content: str, *, model: str = "up-model", usage: str = "", n: int = 1) -> bytes:
    choices = ",".join(
        f'{{"index":{i},"delta":{{"content":{json.dumps(content)}}}}}' for i in range(n)
    )
    body = f'{{"id":"c1","object":"chat.completion.chunk","model":"{model}","choices":[{choices}]{usage}}}'
    return f"data: {body}\n\n".encode()


EVENTS = [
    chunk("Hello"),
    chunk(""),
    chunk('say "model": "x" and \\ and \n'),
    chunk("both", n=2),
    chunk("with null usage", usage=',"usage":null'),
    chunk("spaced null usage", usage=',"usage" : null'),
    chunk("", usage=',"usage":null'),
    chunk("spaced", model="a b"),
    b'data: {"id":"c1","model" : "up-model","choices":[{"delta":{"role":"assistant"}}]}\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"text":"legacy"}],"model":"up-model"}\n\n',
    b'data: {"id":"c1","model":"up-model","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n',
    b'data: {"id":"c1","model":"up-model","choices":[{"delta":{}}],"timings":{"prompt_n":2,"predicted_n":4}}\n\n',
    b'data: {"model":"first","nested":{"model":"second"},"choices":[{"delta":{"content":"x"}}]}\n\n',
    b'data: {"model":"up-model","choices":[{"delta":{"content":"z"}}],"echo":{"model":"up-model"}}\n\n',
    chunk("up-model", model="up-model-2"),  # another model mid-stream; the old one a prefix
    chunk("model"),  # "model" as a value, not a key, after the key
    b'data: {"choices":[{"delta":{"content":"model"}}],"model":"up-model"}\n\n',  # before it
    b'data: {"object":"model","model":"up-model","choices":[]}\n\n',
    b'data: {"model":"up\\"model","choices":[{"delta":{"content":"escaped"}}]}\n\n',
    b'data: {"id":"no model here","choices":[{"delta":{"content":"y"}}]}\n\n',
    b": keep-alive\n\n",
    b"\n\n",  # a blank line too many: an empty event
    b"data: not json\n\n",
    b"data: [DONE]\n\n",
]


def relayed(relay: EventRelay, batches: list[list[bytes]]) -> list[bytes]:
    return [out for batch in batches for out in relay.relay_batch(batch)]


def split(events: list[bytes], cuts: list[int]) -> list[list[bytes]]:
    points = sorted({c % (len(events) + 1) for c in cuts} | {0, len(events)})
    return [events[a:b] for a, b in zip(points, points[1:], strict=False) if events[a:b]]


def old_rule(event: bytes) -> bool:
    return b'"usage"' in event or b'"timings"' in event


def regex_renamed(self: EventRelay, event: bytes) -> bytes:
    # The regex on every event: its first match, and every copy of the same bytes.
    match = streaming.MODEL_RE.search(event)
    return event if match is None else event.replace(match.group(), self._model_plain)


def tally(relay: EventRelay) -> tuple:
    return relay.content_events, relay.usage, relay.saw_done


def content_pieces(out: list[bytes]) -> int:
    return sum(
        len(streaming.CONTENT_RE.findall(e)) for e in out if not e.startswith(b"data: [DONE]")
    )


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
    include_usage=st.booleans(),
    model=st.sampled_from(
        ["bench-chat", 'we"ird\\name', "ünï", "same-len"]
    ),  # "same-len": as long as "up-model"
)
def test_the_relay_sends_and_counts_as_with_the_old_rules(events, cuts, include_usage, model):
    batches = split(events, cuts)
    new = EventRelay(public_model=model, include_usage=include_usage)
    new_out = relayed(new, batches)
    old = EventRelay(public_model=model, include_usage=include_usage)
    counts, streaming._counts = streaming._counts, old_rule
    renamed, EventRelay._renamed = EventRelay._renamed, regex_renamed
    try:
        old_out = relayed(old, batches)
    finally:
        streaming._counts = counts
        EventRelay._renamed = renamed
    assert new_out == old_out
    assert tally(new) == tally(old)
    assert new.content_events == content_pieces(new_out)


def old_sse_batches(reads: list[bytes]) -> list[list[bytes]]:
    """``sse_batches`` before issue 20's Batch: each read's events, split one by one."""
    batches, buffer = [], b""
    for data in reads:
        buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
        events, start = [], 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            events.append(buffer[start : end + 2])
            start = end + 2
        buffer = buffer[start:]
        if events:
            batches.append(events)
    if buffer.strip():
        batches.append([buffer])
    return batches


class Reads:
    """An upstream response whose body arrives in the given reads (``readany``)."""

    def __init__(self, reads: list[bytes]) -> None:
        self.content = self
        self._reads = [data for data in reads if data]  # b"" is the end, as for a Body

    async def readany(self) -> bytes:
        return self._reads.pop(0) if self._reads else b""


def batches_of(reads: list[bytes]) -> list[Batch]:
    async def collect():
        return [batch async for batch in streaming.sse_batches(Reads(reads))]

    return asyncio.run(collect())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


ODD = [b"\n", b"\r\n", b"\r\n\r\n", b'data: {"model":"up-model"}\n\n\n', b"data: tail"]


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.sampled_from(EVENTS + ODD), min_size=1, max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    include_usage=st.booleans(),
    model=st.sampled_from(
        ["bench-chat", 'we"ird\\name', "same-len"]
    ),  # "same-len": as long as "up-model"
)
def test_a_read_relayed_as_its_bytes_is_the_relay_event_by_event(
    events, cuts, include_usage, model
):
    reads = cut(b"".join(events), cuts)
    batches = batches_of(reads)
    old = old_sse_batches(reads)
    assert [b.events for b in batches] == old
    assert all(b.data == b"".join(events) for b, events in zip(batches, old, strict=True))

    whole = EventRelay(public_model=model, include_usage=include_usage)
    each = EventRelay(public_model=model, include_usage=include_usage)
    whole_out, each_out = [], []
    for batch, events in zip(batches, old, strict=True):
        whole_out.append(whole.relay_batch(batch))
        each_out.append(each.relay_batch(events))
        # Seen as soon as relayed, whether or not the read's pieces are counted yet.
        assert whole.content_seen is (each.content_events > 0)
    assert all(type(out) is Batch for out in whole_out)
    assert [out.data for out in whole_out] == [b"".join(out) for out in each_out]
    assert tally(whole) == tally(each)


def test_the_plain_run_of_a_read_is_relayed_whole_and_its_ends_one_by_one(monkeypatch):
    looked = []
    relay_each = EventRelay.relay_batch

    def spy(self, events):
        if type(events) is not Batch:
            looked.extend(events)
        return relay_each(self, events)

    monkeypatch.setattr(EventRelay, "relay_batch", spy)
    relay = EventRelay(public_model="public", include_usage=False)
    middle = [chunk(f"t{i}", usage=',"usage":null') for i in range(20)]
    usage_only = EVENTS[10]
    done = b"data: [DONE]\n\n"
    out = relay.relay_batch(Batch(b"".join([chunk("first"), *middle, usage_only, done])))
    assert looked == [chunk("first"), usage_only, done]
    assert out.data == b"".join(
        e.replace(b'"model":"up-model"', b'"model":"public"')
        for e in [chunk("first"), *middle, done]
    )
    assert relay.content_events == 21 and relay.saw_done
    assert relay.usage.prompt_tokens == 3 and relay.usage.completion_tokens == 5


def test_a_nested_copy_of_the_upstreams_model_is_renamed_too():
    relay = EventRelay(public_model="public", include_usage=False)
    echo = EVENTS[13]
    out = relay.relay_batch(Batch(echo + echo)).data + b"".join(relay.relay_batch([echo]))
    assert b"up-model" not in out
    assert out.count(b'"model":"public"') == 6


def test_null_usage_chunks_are_not_parsed_and_the_real_block_is(monkeypatch):
    parsed = []
    read_usage = EventRelay._read_usage

    def spy(self, event):
        parsed.append(event)
        return read_usage(self, event)

    monkeypatch.setattr(EventRelay, "_read_usage", spy)
    relay = EventRelay(public_model="public", include_usage=False)
    nulls = [chunk(f"t{i}", usage=',"usage":null') for i in range(5)]
    usage_only = EVENTS[10]
    out = relay.relay_batch([*nulls, usage_only, b"data: [DONE]\n\n"])
    assert parsed == [usage_only]
    assert len(out) == 6  # the five chunks and [DONE]; the usage-only chunk is dropped
    assert all(b'"model":"public"' in event for event in out[:5])
    assert relay.usage.prompt_tokens == 3 and relay.usage.completion_tokens == 5
    assert relay.content_events == 5 and relay.saw_done


def test_the_model_is_renamed_with_the_regex_once_and_then_by_find(monkeypatch):
    searched = []
    pattern = streaming.MODEL_RE

    class Spy:
        def search(self, event):
            searched.append(event)
            return pattern.search(event)

    monkeypatch.setattr(streaming, "MODEL_RE", Spy())
    relay = EventRelay(public_model="public", include_usage=False)
    events = [chunk(f"t{i}") for i in range(5)]
    out = relay.relay_batch([*events, chunk("t5", model="other"), chunk("t6")])
    assert searched == [events[0], chunk("t5", model="other"), chunk("t6")]
    assert all(b'"model":"public"' in event for event in out)
    assert not any(b"up-model" in event or b'"other"' in event for event in out)


class CountingPattern:
    """CONTENT_RE, with the bytes each ``findall`` was given."""

    def __init__(self) -> None:
        self.counted: list[bytes] = []

    def findall(self, data):
        self.counted.append(data)
        return CONTENT.findall(data)

    def search(self, data):
        return CONTENT.search(data)


CONTENT = streaming.CONTENT_RE


def test_a_reads_content_is_counted_when_the_next_read_comes_or_when_asked(monkeypatch):
    pattern = CountingPattern()
    monkeypatch.setattr(streaming, "CONTENT_RE", pattern)
    relay = EventRelay(public_model="public", include_usage=False)
    reads = [
        Batch(b"".join(chunk(f"r{r}t{i}") for i in range(4))) for r in range(3)
    ]  # the first event of the first read goes alone (it names the upstream's model)
    relay.relay_batch(reads[0])
    assert relay.content_seen
    assert pattern.counted == [chunk("r0t0")]  # the rest of the read is kept, uncounted
    relay.relay_batch(reads[1])
    relay.relay_batch(reads[2])
    assert len(pattern.counted) == 3  # the first two reads' runs, as the next came
    assert relay.content_events == 12  # the last read's, asked for
    assert len(pattern.counted) == 4
    assert relay.content_events == 12 and len(pattern.counted) == 4  # counted once


def test_the_read_that_brings_the_usage_block_is_not_counted_unasked(monkeypatch):
    pattern = CountingPattern()
    monkeypatch.setattr(streaming, "CONTENT_RE", pattern)
    relay = EventRelay(public_model="public", include_usage=False)
    stream = [chunk("first"), *[chunk(f"t{i}") for i in range(20)], EVENTS[10]]
    relay.relay_batch(Batch(b"".join([*stream, b"data: [DONE]\n\n"])))
    assert relay.saw_done and relay.usage.completion_tokens == 5
    assert relay.content_seen
    assert pattern.counted == [chunk("first")]  # the twenty are billed by the usage block


def test_a_read_without_content_is_not_content_seen():
    relay = EventRelay(public_model="public", include_usage=False)
    role = b'data: {"model":"up-model","choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    relay.relay_batch(Batch(role + role))
    assert not relay.content_seen and relay.content_events == 0
    relay.relay_batch(Batch(role + chunk("hello") + role))
    assert relay.content_seen and relay.content_events == 1
