"""The Responses translation of a reasoning model's answer: ``reasoning_content`` (as
llama.cpp, vLLM and DeepSeek send it) becomes a reasoning item with its summary text, in a
reply and in a stream; a stored response replays with its reasoning item."""

import json

from ai.gateway.pricing import Usage
from ai.gateway.responses import request_parse
from ai.gateway.responses_events import ResponseEvents, replay
from ai.gateway.responses_output import output_items


def test_a_replys_reasoning_content_becomes_a_reasoning_item_before_the_text():
    items = output_items({"content": "42", "reasoning_content": "Six times seven."})
    assert [item["type"] for item in items] == ["reasoning", "message"]
    assert items[0]["summary"] == [{"type": "summary_text", "text": "Six times seven."}]
    assert items[0]["id"].startswith("rs_")


def test_a_reply_without_reasoning_has_no_reasoning_item():
    assert [item["type"] for item in output_items({"content": "42"})] == ["message"]


def _chunk(delta=None, finish=None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _decoded(events: list[bytes]) -> list[dict]:
    return [json.loads(event.partition(b"data: ")[2]) for event in events]


def test_streamed_reasoning_content_becomes_a_reasoning_item_with_its_summary_deltas():
    stream = ResponseEvents(request_parse({"input": "Hi"}), model="pub")
    out = stream.start()
    for chunk in (
        _chunk({"reasoning_content": "Six "}),
        _chunk({"reasoning_content": "sevens."}),
        _chunk({"content": "42"}),
        _chunk(finish="stop"),
    ):
        out += stream.chunk(chunk)
    events = _decoded(out + stream.finish(Usage(3, 5)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[6]["text"] == "Six sevens." and events[6]["output_index"] == 0
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"][0]["text"] == "Six sevens."


def test_a_replayed_response_retells_its_reasoning_and_function_calls():
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "incomplete",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "T"}]},
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "c",
                "name": "f",
                "arguments": "{}",
                "status": "completed",
            },
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    }
    events = _decoded(replay(response))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[-1]["response"] == response
