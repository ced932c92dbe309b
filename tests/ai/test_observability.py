"""Prometheus metrics and the per-request log line."""

import logging
import re

import httpx
import pytest

from tests.ai.conftest import UPSTREAM_SECRET
from tests.logcapture import log_lines  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "purple-elephant-confidential-prompt"
HI = [{"role": "user", "content": PROMPT}]
OK_SERIES = re.compile(
    r'switchboard_gateway_requests_total\{model="acme-chat",route="chat.completions",status="ok"\} ([\d.]+)'
)


def _chat(world, key=None, **extra):
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key or world.alice_key}"},
        json={"model": "acme-chat", "messages": HI, **extra},
    )


def _ok_count(text: str) -> float:
    match = OK_SERIES.search(text)
    return float(match.group(1)) if match else 0.0


def test_metrics_are_off_without_a_token(world, settings):
    settings.METRICS_TOKEN = ""
    assert httpx.get(f"{world.url}/metrics").status_code == 404


def test_metrics_refuse_a_request_without_the_token(world, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert httpx.get(f"{world.url}/metrics").status_code == 401
    wrong = httpx.get(f"{world.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_metrics_count_requests_tokens_and_rejections(world, settings):
    settings.METRICS_TOKEN = "scrape-me"
    auth = {"Authorization": "Bearer scrape-me"}
    before = httpx.get(f"{world.url}/metrics", headers=auth).text
    _chat(world)
    _chat(world, stream=True)
    after = httpx.get(f"{world.url}/metrics", headers=auth).text
    assert _ok_count(after) == _ok_count(before) + 2
    assert 'switchboard_gateway_tokens_total{direction="completion",model="acme-chat"}' in after
    assert "switchboard_gateway_request_seconds_bucket" in after
    assert "switchboard_gateway_time_to_first_token_seconds_count" in after
    assert UPSTREAM_SECRET not in after


def test_one_json_log_line_per_request_and_no_secret_in_any_log(world, caplog, log_lines):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    _chat(world)
    _chat(world, stream=True)
    _chat(world, key="sb-a-wrong-key-that-must-not-be-logged")
    lines = log_lines.events("gateway_request")
    assert len(lines) == 2
    assert {"request_id", "user_id", "model", "upstream_id", "status", "latency_ms"} <= set(
        lines[0]
    )
    assert lines[0]["model"] == "acme-chat" and lines[0]["prompt_tokens"] > 0
    everything = log_lines.text + caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (
        world.alice_key,
        UPSTREAM_SECRET,
        "sb-a-wrong-key-that-must-not-be-logged",
        "Hi",
    ):
        assert secret not in everything


def test_metrics_sum_several_processes_in_multiprocess_mode(world, tmp_path, settings):
    from tests.servers import start_gateway, wait_until_serving

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": "scrape-me"}
    servers = [start_gateway(None, env) for _ in range(2)]
    try:
        for url, _ in servers:
            wait_until_serving(f"{url}/healthz")
        for i in range(6):
            url = servers[i % 2][0]
            response = httpx.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {world.alice_key}"},
                json={"model": "acme-chat", "messages": HI},
            )
            assert response.status_code == 200
        scraped = httpx.get(
            f"{servers[0][0]}/metrics", headers={"Authorization": "Bearer scrape-me"}
        ).text
    finally:
        for _, process in servers:
            process.terminate()
            process.wait(timeout=10)
    assert _ok_count(scraped) == 6


def _series(text: str, name: str, **labels) -> float:
    """A series' value in a scrape (0 when absent); labels in any order."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if not head.startswith(name + "{"):
            continue
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', head[len(name) :]))
        if pairs == labels:
            return float(value)
    return 0.0


def _scrape(world) -> str:
    return httpx.get(f"{world.url}/metrics", headers={"Authorization": "Bearer scrape-me"}).text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_metrics_count_cache_and_reasoning_tokens_as_parts(
    world, acme, fake_upstream, settings, stream
):
    from tests.ai.conftest import make_model

    settings.METRICS_TOKEN = "scrape-me"
    options = {"prompt_tokens": 10, "cached_tokens": 6, "cache_write_tokens": 3}
    make_model(
        "parts", owner=acme, base_urls=[fake_upstream.base_url(reasoning_tokens=4, **options)]
    )
    parts = "switchboard_gateway_token_parts_total"
    kinds = ("cache_read", "cache_write", "reasoning")
    before = _scrape(world)
    reply = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "parts", "messages": HI, "stream": stream},
    )
    assert reply.status_code == 200
    after = _scrape(world)
    grown = [
        _series(after, parts, model="parts", kind=k) - _series(before, parts, model="parts", kind=k)
        for k in kinds
    ]
    assert grown == [6, 3, 4]
    tokens = "switchboard_gateway_tokens_total"
    # The old series go on as they were: every prompt token once, the parts inside it.
    assert (
        _series(after, tokens, model="parts", direction="prompt")
        - _series(before, tokens, model="parts", direction="prompt")
        == 10
    )
    assert (
        _series(after, tokens, model="parts", direction="completion")
        - _series(before, tokens, model="parts", direction="completion")
        == 20
    )


def test_a_reply_without_cache_or_reasoning_tokens_counts_no_token_parts(
    world, acme, fake_upstream, settings
):
    from tests.ai.conftest import make_model

    settings.METRICS_TOKEN = "scrape-me"
    make_model("no-parts", owner=acme, base_urls=[fake_upstream.base_url(prompt_tokens=10)])
    reply = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "no-parts", "messages": HI},
    )
    assert reply.status_code == 200
    after = _scrape(world)
    assert _series(after, "switchboard_gateway_tokens_total", model="no-parts", direction="prompt")
    parts = [
        line for line in after.splitlines() if line.startswith("switchboard_gateway_token_parts")
    ]
    assert not [line for line in parts if 'model="no-parts"' in line]


def test_metrics_count_response_cache_results_per_model(world, fake_upstream, settings):
    settings.METRICS_TOKEN = "scrape-me"
    settings.REDIS_URL = ""
    world.chat.response_cache_ttl = 60
    world.chat.save()
    name = "switchboard_response_cache_requests_total"
    results = ("hit", "miss", "bypass", "refresh")
    before = _scrape(world)
    for header in ("", "", "", "no-store", "refresh"):
        headers = {"x-switchboard-cache": header} if header else {}
        reply = httpx.post(
            f"{world.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {world.alice_key}", **headers},
            json={"model": "acme-chat", "messages": HI},
        )
        assert reply.status_code == 200
    _chat(world, key=world.charlie_key, model="charlie-chat")  # caches nothing: not counted
    after = _scrape(world)
    grown = [
        _series(after, name, model="acme-chat", result=r)
        - _series(before, name, model="acme-chat", result=r)
        for r in results
    ]
    assert grown == [2, 1, 1, 1]
    assert _series(after, name, model="charlie-chat", result="miss") == 0
