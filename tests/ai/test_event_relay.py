"""The stream relay skips OpenAI's per-chunk ``"usage": null`` (issue 20).

Before, every event that mentioned "usage" was parsed as JSON, to look for a usage block;
OpenAI streams that asked for usage carry ``"usage": null`` in every chunk, so every chunk
was parsed. ``streaming._counts`` now passes those over. Whatever the events and however
the reads split them, the relay must send the same events and tally the same usage as
with the old rule.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ai.gateway import streaming
from ai.gateway.streaming import EventRelay


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


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
    include_usage=st.booleans(),
    model=st.sampled_from(["bench-chat", 'we"ird\\name', "ünï"]),
)
def test_the_relay_sends_and_counts_as_with_the_old_rule(events, cuts, include_usage, model):
    batches = split(events, cuts)
    new = EventRelay(public_model=model, include_usage=include_usage)
    new_out = relayed(new, batches)
    old = EventRelay(public_model=model, include_usage=include_usage)
    counts, streaming._counts = streaming._counts, old_rule
    try:
        old_out = relayed(old, batches)
    finally:
        streaming._counts = counts
    assert new_out == old_out
    assert (new.content_events, new.usage, new.saw_done) == (
        old.content_events,
        old.usage,
        old.saw_done,
    )


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
