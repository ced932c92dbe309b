"""The bench's minimal relay (issue 20) relays, and run.py takes its new flags."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fakeupstream.server import FakeUpstreamThread
from tests.bench.run import parse_args
from tests.servers import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "Say something nice"}]}


@pytest.fixture(scope="module")
def fake():
    with FakeUpstreamThread() as fake:
        yield fake


@pytest.fixture(scope="module")
def relay(fake):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "tests/bench/relay.py", "--port", str(port)]
        + ["--upstream", fake.base_url(), "--key", "sk-relay"],
        cwd=ROOT,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=15)
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def received(fake) -> list[dict]:
    """What the fake upstream was sent, oldest first."""
    return httpx.get(f"{fake.url}/_fake/requests", timeout=10).json()["data"]


def post(url: str, body: dict, key: str = "sk-relay") -> httpx.Response:
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_it_relays_a_json_completion_as_the_upstream_answered_it(fake, relay):
    direct = post(f"{fake.base_url()}/chat/completions", BODY)
    relayed = post(relay, BODY)
    assert received(fake)[-1]["json"] == BODY
    assert received(fake)[-1]["authorization"]["present"] is False
    assert relayed.status_code == 200
    assert relayed.headers["content-type"].startswith("application/json")
    answer, expected = relayed.json(), direct.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == expected["choices"][0]["message"]
    assert answer["usage"] == expected["usage"]


def test_it_relays_a_stream_event_by_event_to_its_end(fake, relay):
    direct = post(f"{fake.base_url()}/chat/completions", {**BODY, "stream": True})
    relayed = post(relay, {**BODY, "stream": True})
    assert relayed.status_code == 200
    assert relayed.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in relayed.text.splitlines() if line.startswith("data: ")]
    expected = [line[6:] for line in direct.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len(events) == len(expected) > 2
    content = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    wanted = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in expected[:-1]]
    assert "".join(content) == "".join(wanted) != ""


def test_it_writes_a_streams_events_as_they_arrive_not_at_its_end(relay):
    # The upstream sends two events, then nothing for a minute: a relay that waited for
    # the stream's end would time the read out.
    stalled = {**BODY, "stream": True, "fake_upstream": {"stall_after": 2, "stall_ms": 60000}}
    headers = {"Authorization": "Bearer sk-relay"}
    events = []
    with httpx.stream("POST", relay, json=stalled, headers=headers, timeout=10) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"]:
                events.append(json.loads(line[6:])["choices"][0]["delta"].get("content"))
            if len([e for e in events if e]) == 2:
                break
    assert [e for e in events if e] == ["tok0 ", "tok1 "]


def test_it_refuses_a_wrong_bearer_with_401_before_calling_the_upstream(fake, relay):
    httpx.delete(f"{fake.url}/_fake/requests", timeout=10)
    answer = post(relay, BODY, key="sk-wrong")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(relay, json=BODY, timeout=10).status_code == 401
    assert received(fake) == []


def test_it_refuses_a_body_that_is_not_a_json_object_with_400(relay):
    answer = httpx.post(
        relay, content=b"[1, 2", headers={"Authorization": "Bearer sk-relay"}, timeout=10
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_the_bench_measures_the_gateways_rss_only_when_asked():
    args = parse_args([])
    assert (args.rss_requests, args.concurrency, args.modes) == (0, [1, 16, 64], ["json", "sse"])
    assert parse_args(["--rss-requests", "100000"]).rss_requests == 100000


@pytest.mark.parametrize(
    "argv", [["--rss-requests", "-1"], ["--modes", "xml"], ["--concurrency", "0"]]
)
def test_the_bench_refuses_arguments_it_cannot_measure(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err
