"""The gateway's own ASGI handling (ai.api.fastpath, trimmed in issue 20): the request's
body and headers as the views read them, and the client leaving."""

import json
import time

import httpx
import pytest

from ai.models import UsageEvent, UsageStatus
from tests.ai.conftest import make_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)


def _chunks(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_body_past_the_memory_limit_arriving_in_pieces_is_read_whole(
    world, fake_upstream, settings
):
    # Up to FILE_UPLOAD_MAX_MEMORY_SIZE the body stays in memory; past it, it is spooled
    # to a temporary file as Django does. Either way the view reads all of it.
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    text = "".join(f"word{i} " for i in range(6000))  # ~50 KB
    body = json.dumps({"model": "acme-chat", "messages": [{"role": "user", "content": text}]})
    for size in (100_000, 700):  # one piece, then many
        fake_upstream.clear()
        response = httpx.post(
            f"{world.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {world.alice_key}"},
            content=_chunks(body.encode(), size),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        [sent] = fake_upstream.requests()
        assert sent["json"]["messages"][0]["content"] == text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"AUTHORIZATION": "Bearer {key}"}, 200),  # names are case-insensitive
        ({"x-api-key": "{key}"}, 200),
        ({"X_API_KEY": "{key}"}, 401),  # an underscore name never poses as the dashed one
        ({"Authorization": "Bearer {key}", "X-Api-Key": "sb-other"}, 401),  # two keys
    ],
)
def test_the_views_read_headers_as_django_would(world, headers, status):
    sent = {name: value.format(key=world.alice_key) for name, value in headers.items()}
    body = {"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(f"{world.url}/v1/chat/completions", headers=sent, json=body, timeout=10)
    assert response.status_code == status, response.text


def test_repeated_headers_reach_the_view_joined(world, fake_upstream):
    # The response cache's header, sent twice: joined with "," (as Django joins them), it
    # is no mode the cache knows, so the request is refused naming it (either one alone
    # is served).
    body = {"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]}
    url, auth = f"{world.url}/v1/chat/completions", ("Authorization", f"Bearer {world.alice_key}")
    for modes, status in ((["no-store"], 200), (["no-store", "refresh"], 400)):
        headers = [auth, *(("X-Switchboard-Cache", mode) for mode in modes)]
        response = httpx.post(url, headers=headers, json=body, timeout=10)
        assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == "x-switchboard-cache"


def test_a_client_that_leaves_mid_stream_is_recorded_at_once(world, acme, fake_upstream):
    # The view runs in the request's task; a second task watches for the client leaving
    # and cancels it: the relay's end (its usage event) runs then, not at collection.
    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=200)])
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {world.alice_key}"}
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions", headers=headers, json=body, timeout=10
    ) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    left = time.monotonic()
    [event] = wait_for_usage(1)
    assert event.status == UsageStatus.CLIENT_CANCELLED
    assert time.monotonic() - left < 2  # the 20 chunks would take 4 s
    assert UsageEvent.objects.count() == 1
