"""The OpenAI-compatible fake upstream used by gateway tests, the demo and benchmarks."""

import base64
import contextlib
import json
import time

import httpx
import pytest

from fakeupstream import (
    DEFAULT_TOKENS,
    FakeUpstreamThread,
    auth_fingerprint,
    format_faults,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello there world"}]}


@pytest.fixture(scope="module")
def fake():
    with FakeUpstreamThread(models=["extra-model"]) as server:
        yield server


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def post(client, base, path, body, **kwargs):
    return client.post(base + path, json=body, **kwargs)


def read_sse(client, url, body, **kwargs):
    """POST and collect the SSE stream: (parsed chunks, saw [DONE], arrival times)."""
    chunks, times, done = [], [], False
    with (
        contextlib.suppress(httpx.RemoteProtocolError),
        client.stream("POST", url, json=body, **kwargs) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            payload = line[len("data: ") :]
            times.append(time.perf_counter())
            if payload == "[DONE]":
                done = True
            else:
                chunks.append(json.loads(payload))
    return chunks, done, times


def assert_chat_chunk(chunk, model="gpt-test"):
    """CreateChatCompletionStreamResponse: required keys, and usage only on the usage chunk."""
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["id"].startswith("chatcmpl-")
    assert isinstance(chunk["created"], int)
    assert chunk["model"] == model
    assert isinstance(chunk["choices"], list)
    for choice in chunk["choices"]:
        assert choice["index"] == 0
        assert isinstance(choice["delta"], dict)
        assert "finish_reason" in choice
    if chunk["choices"]:
        assert "usage" not in chunk
    else:
        assert set(chunk["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def content_chunks(chunks):
    return [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]


def error_of(response, status):
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --------------------------------------------------------------------------- basics


def test_it_reports_health(fake, client):
    assert client.get(fake.url + "/_fake/health").json() == {"ok": True}


def test_it_lists_models(fake, client):
    body = client.get(fake.base_url() + "/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == ["fake-chat", "fake-embed", "fake-image", "extra-model"]
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert model["owned_by"] == "fake-upstream"


def test_it_returns_a_chat_completion(fake, client):
    response = post(client, fake.base_url(), "/chat/completions", CHAT)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-test"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "".join(f"tok{i} " for i in range(DEFAULT_TOKENS))
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": DEFAULT_TOKENS,
        "total_tokens": 3 + DEFAULT_TOKENS,
    }


def test_it_is_deterministic(fake, client):
    first = post(client, fake.base_url(), "/chat/completions", CHAT).json()
    second = post(client, fake.base_url(), "/chat/completions", CHAT).json()
    assert first["choices"] == second["choices"]
    assert first["id"] != second["id"]


def test_it_cuts_the_completion_at_max_tokens(fake, client):
    body = post(client, fake.base_url(), "/chat/completions", {**CHAT, "max_tokens": 3}).json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    body = post(
        client, fake.base_url(), "/chat/completions", {**CHAT, "max_completion_tokens": 2}
    ).json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 "


def test_it_counts_prompt_words_across_messages_and_text_parts(fake, client):
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one two three"},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
            ],
        },
    ]
    body = post(client, fake.base_url(), "/chat/completions", {"model": "m", "messages": messages})
    assert body.json()["usage"]["prompt_tokens"] == 5
    empty = [{"role": "user", "content": ""}]
    body = post(client, fake.base_url(), "/chat/completions", {"model": "m", "messages": empty})
    assert body.json()["usage"]["prompt_tokens"] == 1


# --------------------------------------------------------------------------- streaming


def test_it_streams_chunks_separately(fake, client):
    url = fake.base_url(chunk_delay_ms=30) + "/chat/completions"
    chunks, done, times = read_sse(client, url, {**CHAT, "stream": True, "max_tokens": 5})
    assert done
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    batches = 1 + sum(1 for gap in gaps if gap > 0.01)
    assert batches >= 3


def test_stream_chunks_have_the_openai_shape(fake, client):
    url = fake.base_url() + "/chat/completions"
    chunks, done, _ = read_sse(client, url, {**CHAT, "stream": True})
    assert done
    for chunk in chunks:
        assert_chat_chunk(chunk)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert [c["choices"][0]["delta"] for c in tokens] == [
        {"content": f"tok{i} "} for i in range(DEFAULT_TOKENS)
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_usage_chunk_is_sent_only_when_include_usage_is_asked(fake, client):
    url = fake.base_url() + "/chat/completions"
    chunks, done, _ = read_sse(client, url, {**CHAT, "stream": True})
    assert done
    assert all(c["choices"] for c in chunks)

    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 4}
    chunks, done, _ = read_sse(client, url, body)
    assert done
    usage_chunk = chunks[-1]
    assert_chat_chunk(usage_chunk)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks[:-1])


# --------------------------------------------------------------------------- faults


def test_latency_fault_delays_the_response(fake, client):
    started = time.perf_counter()
    response = post(client, fake.base_url(latency_ms=200), "/chat/completions", CHAT)
    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.2


def test_ttft_fault_delays_the_first_chunk_after_the_headers(fake, client):
    url = fake.base_url(ttft_ms=300) + "/chat/completions"
    with client.stream("POST", url, json={**CHAT, "stream": True}) as response:
        headers_at = time.perf_counter()
        assert response.status_code == 200
        first_at = None
        lines = []
        for line in response.iter_lines():
            if line and first_at is None:
                first_at = time.perf_counter()
            lines.append(line)
    assert lines[-2] == "data: [DONE]"
    assert first_at - headers_at >= 0.2


def test_status_fault_answers_with_an_openai_error(fake, client):
    response = post(client, fake.base_url(status=500), "/chat/completions", CHAT)
    error = error_of(response, 500)
    assert error["type"] == "server_error"
    response = post(client, fake.base_url(status=429), "/chat/completions", CHAT)
    assert error_of(response, 429)["code"] == "rate_limit_exceeded"
    response = post(client, fake.base_url(status=503), "/embeddings", {"input": "x"})
    error_of(response, 503)


def test_drop_after_aborts_the_stream_without_done(fake, client):
    url = fake.base_url(drop_after=3) + "/chat/completions"
    chunks, done, _ = read_sse(client, url, {**CHAT, "stream": True})
    assert not done
    assert len(content_chunks(chunks)) == 3
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


def test_drop_after_closes_a_json_request_without_a_response(fake, client):
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, fake.base_url(drop_after=0), "/chat/completions", CHAT)
    # the server carries on
    assert post(client, fake.base_url(), "/chat/completions", CHAT).status_code == 200


def test_no_usage_never_sends_usage(fake, client):
    base = fake.base_url(no_usage=True)
    body = post(client, base, "/chat/completions", CHAT).json()
    assert "usage" not in body
    stream_body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    chunks, done, _ = read_sse(client, base + "/chat/completions", stream_body)
    assert done
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert "usage" not in post(client, base, "/completions", {"prompt": "x"}).json()
    assert "usage" not in post(client, base, "/embeddings", {"input": "x"}).json()


def test_tokens_fault_sets_the_completion_length(fake, client):
    body = post(client, fake.base_url(tokens=2), "/chat/completions", CHAT).json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 "
    assert body["usage"]["completion_tokens"] == 2


def test_fail_first_fails_k_requests_then_recovers(fake, client):
    base = fake.base_url(fail_first=2, status=503, tokens=7)
    codes = [post(client, base, "/chat/completions", CHAT).status_code for _ in range(4)]
    assert codes == [503, 503, 200, 200]

    # a different option set has its own counter; the default status is 500
    other = fake.base_url(fail_first=1, tokens=8)
    codes = [post(client, other, "/chat/completions", CHAT).status_code for _ in range(2)]
    assert codes == [500, 200]

    client.delete(fake.url + "/_fake/requests")
    assert post(client, base, "/chat/completions", CHAT).status_code == 503


def test_echo_returns_the_received_body_exactly(fake, client):
    body = {
        **CHAT,
        "tools": [
            {
                "type": "function",
                "function": {"name": "lookup", "parameters": {"type": "object"}},
            }
        ],
        "response_format": {"type": "json_object"},
        "some_unknown_field": {"nested": [1, 2.5, None, "x"]},
        "temperature": 0.2,
    }
    response = post(client, fake.base_url(echo=True), "/chat/completions", body)
    content = response.json()["choices"][0]["message"]["content"]
    assert content == json.dumps(body, sort_keys=True)
    assert json.loads(content) == body
    assert response.json()["model"] == "gpt-test"


def test_echo_streams_the_body_as_one_chunk(fake, client):
    body = {**CHAT, "stream": True, "extra": "yes"}
    url = fake.base_url(echo=True) + "/chat/completions"
    chunks, done, _ = read_sse(client, url, body)
    assert done
    contents = content_chunks(chunks)
    assert len(contents) == 1
    assert contents[0]["choices"][0]["delta"]["content"] == json.dumps(body, sort_keys=True)


def test_faults_can_be_set_per_request_with_headers(fake, client):
    response = post(
        client, fake.base_url(), "/chat/completions", CHAT, headers={"X-Fake-Status": "503"}
    )
    error_of(response, 503)
    response = post(
        client,
        fake.base_url(),
        "/chat/completions",
        CHAT,
        headers={"X-Fake-Echo": "1", "X-Fake-No-Usage": "true"},
    )
    body = response.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == CHAT
    assert "usage" not in body
    started = time.perf_counter()
    response = post(
        client, fake.base_url(), "/chat/completions", CHAT, headers={"X-Fake-Latency-Ms": "150"}
    )
    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.15


def test_faults_can_be_set_per_request_in_the_body(fake, client):
    body = {**CHAT, "fake_upstream": {"status": 500}}
    error_of(post(client, fake.base_url(), "/chat/completions", body), 500)
    body = {**CHAT, "fake_upstream": {"tokens": 4}}
    content = post(client, fake.base_url(), "/chat/completions", body).json()["choices"][0]
    assert content["message"]["content"] == "tok0 tok1 tok2 tok3 "


def test_faults_can_be_set_per_upstream_with_the_path(fake, client):
    base = fake.base_url(status=500, latency_ms=20)
    assert base == f"{fake.url}/f/status=500,latency_ms=20/v1"
    error_of(post(client, base, "/chat/completions", CHAT), 500)
    error_of(client.get(base + "/models"), 500)
    assert client.get(f"{fake.url}/f/tokens=1/v1/models").status_code == 200


def test_body_beats_header_beats_path(fake, client):
    base = fake.base_url(tokens=3)

    def tokens(headers=None, options=None):
        body = {**CHAT, "fake_upstream": options} if options else CHAT
        response = post(client, base, "/chat/completions", body, headers=headers or {})
        return response.json()["usage"]["completion_tokens"]

    assert tokens() == 3
    assert tokens(headers={"X-Fake-Tokens": "5"}) == 5
    assert tokens(headers={"X-Fake-Tokens": "5"}, options={"tokens": 7}) == 7


def test_unknown_or_invalid_options_are_rejected(fake, client):
    error = error_of(post(client, f"{fake.url}/f/nope=1/v1", "/chat/completions", CHAT), 400)
    assert "nope" in error["message"]
    body = {**CHAT, "fake_upstream": {"latency_ms": "soon"}}
    error_of(post(client, fake.base_url(), "/chat/completions", body), 400)
    with pytest.raises(ValueError):
        format_faults(nope=1)


# --------------------------------------------------------------------------- other endpoints


def test_it_returns_a_legacy_completion(fake, client):
    body = post(
        client, fake.base_url(), "/completions", {"model": "davinci", "prompt": "say hi"}
    ).json()
    assert body["object"] == "text_completion"
    assert body["model"] == "davinci"
    assert body["choices"] == [
        {
            "text": "".join(f"tok{i} " for i in range(DEFAULT_TOKENS)),
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] == 2


def test_it_streams_a_legacy_completion(fake, client):
    body = {
        "model": "davinci",
        "prompt": ["a b", "c"],
        "stream": True,
        "max_tokens": 3,
        "stream_options": {"include_usage": True},
    }
    chunks, done, _ = read_sse(client, fake.base_url() + "/completions", body)
    assert done
    assert all(c["object"] == "text_completion" and c["model"] == "davinci" for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert texts == ["tok0 ", "tok1 ", "tok2 ", ""]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}

    plain = {"prompt": "x", "stream": True}
    chunks, done, _ = read_sse(client, fake.base_url() + "/completions", plain)
    assert done
    assert all(c["choices"] for c in chunks)


def test_it_embeds_a_string(fake, client):
    body = post(
        client, fake.base_url(), "/embeddings", {"model": "emb", "input": "hello world"}
    ).json()
    assert body["object"] == "list"
    assert body["model"] == "emb"
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    (item,) = body["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == 8
    assert all(isinstance(v, float) for v in item["embedding"])


def test_it_embeds_a_list_deterministically_with_dimensions(fake, client):
    request = {"model": "emb", "input": ["a", "b c", [1, 2, 3]], "dimensions": 16}
    body = post(client, fake.base_url(), "/embeddings", request).json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(d["embedding"]) == 16 for d in body["data"])
    assert body["usage"]["prompt_tokens"] == 6
    again = post(client, fake.base_url(), "/embeddings", request).json()
    assert again["data"] == body["data"]
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    single = post(client, fake.base_url(), "/embeddings", {"input": "a", "dimensions": 16}).json()
    assert single["data"][0]["embedding"] == body["data"][0]["embedding"]


def test_it_embeds_in_base64_like_the_openai_sdk_asks(fake, client):
    body = post(
        client, fake.base_url(), "/embeddings", {"input": "a", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(raw) == 8 * 4


def test_it_generates_an_image_as_base64_png(fake, client):
    body = post(client, fake.base_url(), "/images/generations", {"prompt": "a cat", "n": 2}).json()
    assert isinstance(body["created"], int)
    assert len(body["data"]) == 2
    assert base64.b64decode(body["data"][0]["b64_json"]).startswith(PNG_SIGNATURE)


def test_it_generates_an_image_url_it_serves(fake, client):
    body = post(
        client, fake.base_url(), "/images/generations", {"prompt": "x", "response_format": "url"}
    ).json()
    url = body["data"][0]["url"]
    assert url == f"{fake.url}/v1/images/fake.png"
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- bad requests


def test_bad_json_is_a_400_with_the_openai_envelope(fake, client):
    response = client.post(
        fake.base_url() + "/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert error_of(response, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"model": "m"}, "messages"),
        ("/completions", {"model": "m"}, "prompt"),
        ("/embeddings", {"model": "m"}, "input"),
        ("/images/generations", {"model": "m"}, "prompt"),
    ],
)
def test_missing_required_fields_are_a_400(fake, client, path, body, param):
    error = error_of(post(client, fake.base_url(), path, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


# --------------------------------------------------------------------------- recording


def test_it_records_what_it_received(fake, client):
    assert client.delete(fake.url + "/_fake/requests").status_code == 200
    post(
        client,
        fake.base_url(tokens=2),
        "/chat/completions",
        CHAT,
        headers={"Authorization": "Bearer sk-secret-123", "X-Trace": "abc"},
    )
    client.get(fake.base_url() + "/models")

    records = client.get(fake.url + "/_fake/requests").json()["data"]
    assert [r["path"] for r in records] == ["/f/tokens=2/v1/chat/completions", "/v1/models"]
    chat = records[0]
    assert chat["method"] == "POST"
    assert chat["json"] == CHAT
    assert chat["faults"] == {"tokens": 2}
    assert chat["headers"]["X-Trace"] == "abc"
    assert "sk-secret-123" not in json.dumps(records)
    assert not any(k.lower() == "authorization" for k in chat["headers"])
    assert chat["authorization"]["present"] is True
    assert chat["authorization"]["sha256_prefix"] == auth_fingerprint("sk-secret-123")
    assert records[1]["authorization"]["present"] is False
    assert fake.requests() == records

    client.delete(fake.url + "/_fake/requests")
    assert client.get(fake.url + "/_fake/requests").json()["data"] == []


def test_it_keeps_only_the_last_100_requests(fake, client):
    fake.clear()
    for _ in range(105):
        client.get(fake.base_url() + "/models")
    assert len(fake.requests()) == 100


def test_base_url_encodes_faults(fake):
    assert fake.base_url() == f"{fake.url}/v1"
    assert fake.base_url(echo=True, no_usage=True, latency_ms=1.5) == (
        f"{fake.url}/f/echo=1,no_usage=1,latency_ms=1.5/v1"
    )


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def test_it_calls_the_first_tool_with_the_last_user_message(fake, client):
    from tests.openai_schema import validate

    response = post(client, fake.base_url(), "/chat/completions", {**CHAT, "tools": TOOLS})
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"query": "hello there world"}


def test_it_answers_with_text_after_a_tool_result_or_with_tool_choice_none(fake, client):
    after = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        ],
    }
    result = {"role": "tool", "tool_call_id": "c", "content": "found"}
    bodies = [
        {**CHAT, "tools": TOOLS, "messages": [*CHAT["messages"], after, result]},
        {**CHAT, "tools": TOOLS, "tool_choice": "none"},
    ]
    for body in bodies:
        choice = post(client, fake.base_url(), "/chat/completions", body).json()["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["message"]["content"].startswith("tok0")


def test_it_streams_a_tool_call_in_pieces(fake, client):
    from tests.openai_schema import validate

    body = {**CHAT, "tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}}
    chunks, done, _ = read_sse(client, fake.base_url() + "/chat/completions", body)
    assert done
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0]["function"]["name"] == "lookup" and calls[0]["id"].startswith("call_")
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"query": "hello there world"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def test_it_calls_the_requests_tools_when_asked(fake, client):
    body = {**CHAT, "tools": WEATHER_TOOLS, "fake_upstream": {"tool_calls": 2}}
    reply = post(client, fake.base_url(), "/chat/completions", body).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("call_0", "get_weather"),
        ("call_1", "get_weather"),
    ]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"call": 0}, {"call": 1}]


def test_it_streams_tool_calls_in_pieces(fake, client):
    body = {**CHAT, "tools": WEATHER_TOOLS, "stream": True}
    chunks, done, _ = read_sse(client, fake.base_url(tool_calls=1) + "/chat/completions", body)
    assert done
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks]
    calls = [d[0] for d in deltas if d]
    assert calls[0]["id"] == "call_0" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"call": 0}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
