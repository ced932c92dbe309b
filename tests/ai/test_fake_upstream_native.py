"""The fake upstream's native routes: Anthropic Messages (``POST /v1/messages``: JSON and SSE
in Anthropic's shapes, its usage block with cache reads and writes, tools, errors, faults) and
the Responses API (``POST /v1/responses``: a response object or its events, faults)."""

import contextlib
import json

import httpx
import pytest

from fakeupstream import FakeUpstreamThread

MESSAGE = {
    "model": "claude-x",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "a b c"}],
}
TOOLS = [{"name": "lookup", "input_schema": {"type": "object"}}]


@pytest.fixture(scope="module")
def fake():
    with FakeUpstreamThread() as server:
        yield server


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def events_of(client, url, body):
    """The (event name, data) pairs of a stream, until it ends or is cut."""
    events, kind = [], None
    with (
        contextlib.suppress(httpx.RemoteProtocolError),
        client.stream("POST", url, json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                assert data["type"] == kind
                events.append((kind, data))
    return events


def test_it_answers_a_message(fake, client):
    response = client.post(fake.base_url() + "/messages", json=MESSAGE)
    assert response.status_code == 200
    message = response.json()
    assert message["id"].startswith("msg_")
    assert (message["type"], message["role"], message["model"]) == (
        "message",
        "assistant",
        "claude-x",
    )
    assert message["content"] == [{"type": "text", "text": "".join(f"tok{i} " for i in range(20))}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    assert message["usage"] == {
        "input_tokens": 3,
        "output_tokens": 20,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def test_its_usage_excludes_the_cache_from_input_tokens(fake, client):
    url = fake.base_url(prompt_tokens=10, cached_tokens=4, cache_write_tokens=3) + "/messages"
    usage = client.post(url, json={**MESSAGE, "max_tokens": 5}).json()["usage"]
    assert usage == {
        "input_tokens": 3,
        "output_tokens": 5,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 3,
    }
    message = client.post(fake.base_url(no_usage=True) + "/messages", json=MESSAGE).json()
    assert "usage" not in message


def test_it_streams_anthropics_events(fake, client):
    url = fake.base_url(prompt_tokens=10, cached_tokens=4) + "/messages"
    events = events_of(client, url, {**MESSAGE, "max_tokens": 3, "stream": True})
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["model"] == "claude-x"
    assert start["usage"]["cache_read_input_tokens"] == 4
    assert start["usage"]["input_tokens"] == 6
    text = "".join(d["delta"]["text"] for k, d in events if k == "content_block_delta")
    assert text == "tok0 tok1 tok2 "
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"] == {"output_tokens": 3}


@pytest.mark.parametrize("stream", [False, True])
def test_it_calls_the_requests_tools_when_asked(fake, client, stream):
    url = fake.base_url(tool_calls=1) + "/messages"
    body = {**MESSAGE, "tools": TOOLS, "stream": stream}
    if stream:
        events = events_of(client, url, body)
        block = events[1][1]["content_block"]
        arguments = "".join(
            d["delta"]["partial_json"] for k, d in events if k == "content_block_delta"
        )
        assert json.loads(arguments) == {"call": 0}
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    else:
        message = client.post(url, json=body).json()
        [block] = message["content"]
        assert block["input"] == {"call": 0}
        assert message["stop_reason"] == "tool_use"
    assert (block["type"], block["name"]) == ("tool_use", "lookup")
    assert block["id"].startswith("toolu_")


def test_its_errors_have_anthropics_shape(fake, client):
    response = client.post(fake.base_url(status=529) + "/messages", json=MESSAGE)
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "fake upstream: injected error (status 529)",
        },
    }
    response = client.post(fake.base_url() + "/messages", json={"model": "x", "max_tokens": 1})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = client.post(fake.base_url() + "/messages", content=b"[]")
    assert response.json()["type"] == "error"


def test_drop_after_cuts_the_stream_before_message_stop(fake, client):
    url = fake.base_url(drop_after=2) + "/messages"
    kinds = [kind for kind, _ in events_of(client, url, {**MESSAGE, "stream": True})]
    assert kinds.count("content_block_delta") == 2
    assert "message_stop" not in kinds and "message_delta" not in kinds


# --- /v1/responses (an upstream that serves the Responses API) --------------------------------


def test_it_answers_a_response(fake, client):
    url = fake.base_url(prompt_tokens=10, cached_tokens=6, reasoning_tokens=3) + "/responses"
    response = client.post(url, json={"model": "gpt-x", "input": "a b"}).json()
    assert (response["object"], response["model"], response["status"]) == (
        "response",
        "gpt-x",
        "completed",
    )
    [item] = response["output"]
    assert item["content"][0]["text"].startswith("tok0 tok1 ")
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 6},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 30,
    }


def test_it_streams_the_responses_events(fake, client):
    url = fake.base_url() + "/responses"
    body = {"model": "gpt-x", "input": "a b", "max_output_tokens": 2, "stream": True}
    events = events_of(client, url, body)
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 2
    assert kinds[-1] == "response.incomplete"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 2


def test_drop_after_cuts_a_responses_stream_before_its_end(fake, client):
    url = fake.base_url(drop_after=1) + "/responses"
    kinds = [kind for kind, _ in events_of(client, url, {"input": "a", "stream": True})]
    assert kinds.count("response.output_text.delta") == 1
    assert "response.completed" not in kinds
