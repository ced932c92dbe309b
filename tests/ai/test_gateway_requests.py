"""Authentication, validation, usage events and caching on the gateway."""

import socket
import time

import httpx
import pytest
from django.db.backends.utils import CursorWrapper

from accounts.models import APIKey
from accounts.services import apikey_revoke
from ai.models import ModelLink, UsageEvent
from panel.models import SiteSettings
from tests.ai.conftest import make_model, session_client, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def _post(world, path="/v1/chat/completions", key=None, headers=None, **kwargs):
    headers = {"Authorization": f"Bearer {key or world.alice_key}", **(headers or {})}
    return httpx.post(f"{world.url}{path}", headers=headers, timeout=10, **kwargs)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sb-nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "unknown", "basic", "empty"],
)
def test_it_refuses_missing_or_bad_keys_with_401(world, headers):
    response = httpx.post(
        f"{world.url}/v1/chat/completions", headers=headers, json={"messages": HI}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_it_stops_accepting_a_revoked_key_at_once(world):
    assert _post(world, json={"messages": HI}).status_code == 200
    apikey_revoke(key=APIKey.objects.get(name="alice"))
    assert _post(world, json={"messages": HI}).status_code == 401


def test_it_stops_serving_a_disabled_link_at_once(world):
    assert _post(world, json={"model": "acme-chat", "messages": HI}).status_code == 200
    link = ModelLink.objects.get(model=world.chat)
    link.is_enabled = False
    link.save()
    assert _post(world, json={"model": "acme-chat", "messages": HI}).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "acme-chat"}', "messages"),
        (b'{"model": 5, "messages": []}', "model"),
        (b'{"modelId": "x", "messages": []}', "modelId"),
        (b'{"model": "acme-chat", "messages": [], "max_tokens": -1}', "max_tokens"),
        (b'{"model": "acme-chat", "messages": [], "max_tokens": 100000}', "max_tokens"),
    ],
)
def test_it_answers_bad_input_with_a_400_envelope_and_records_nothing(world, body, param):
    response = _post(world, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    time.sleep(0.05)
    assert not UsageEvent.objects.exists()


def test_it_answers_a_wrong_method_with_a_405_envelope(world):
    response = httpx.get(
        f"{world.url}/v1/chat/completions", headers={"Authorization": f"Bearer {world.alice_key}"}
    )
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_it_records_one_usage_event_per_request_with_its_cost(world, alice, acme):
    _post(world, json={"model": "acme-chat", "messages": HI})
    _post(world, json={"model": "acme-chat", "messages": HI, "stream": True})
    events = wait_for_usage(2)
    assert len(events) == 2
    first = events[0]
    assert (first.user, first.organisation, first.model) == (alice, acme, world.chat)
    assert first.api_key == APIKey.objects.get(name="alice")
    assert first.link == ModelLink.objects.get(model=world.chat)
    assert first.route == "chat.completions" and not first.is_stream and events[1].is_stream
    assert (first.prompt_tokens, first.completion_tokens) == (1, 20)
    # 1 prompt token at 2/M and 20 completion tokens at 8/M.
    assert str(first.cost) == "0.000162"
    assert first.request_id.startswith("req_") and first.latency_ms >= 0
    assert events[1].ttft_ms is not None


def test_it_estimates_usage_when_the_upstream_sends_none(world, acme, fake_upstream):
    make_model("quiet", owner=acme, base_urls=[fake_upstream.base_url(no_usage=1, tokens=8)])
    _post(world, json={"model": "quiet", "messages": [{"role": "user", "content": "x" * 40}]})
    (event,) = wait_for_usage(1)
    assert event.is_estimated and event.prompt_tokens == 10 and event.completion_tokens > 0


def test_it_records_a_client_that_goes_away_mid_stream(world, acme, fake_upstream):
    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=100)])
    host, port = world.url.removeprefix("http://").split(":")
    body = b'{"model": "slow", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {world.alice_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(4096)
    (event,) = wait_for_usage(1)
    assert event.status == "client_cancelled"
    assert 1 <= event.completion_tokens < 20


def test_it_makes_no_database_query_on_a_warm_request(world, monkeypatch, settings):
    settings.GATEWAY_USAGE_FLUSH_INTERVAL = 5  # keep the batched usage write out of the window
    assert _post(world, json={"model": "acme-chat", "messages": HI}).status_code == 200
    queries = []
    original = CursorWrapper._execute_with_wrappers

    def counting(self, sql, *args, **kwargs):
        queries.append(sql)
        return original(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting)
    assert _post(world, json={"model": "acme-chat", "messages": HI}).status_code == 200
    monkeypatch.undo()
    assert queries == []
    from asgiref.sync import async_to_sync

    from ai.gateway import ledger

    async_to_sync(ledger.flush)()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/models",
        "/api/v1/ai/inference",
        "/api/ai/chat",
        "/api/ai/studio",
        "/api/ai/models",
        "/api/ai/my-models",
    ],
)
def test_it_answers_every_ai_route_with_feature_disabled_when_the_flag_is_off(world, path):
    SiteSettings.objects.update_or_create(pk=1, defaults={"is_ai_enabled": False})
    method = httpx.get if "models" in path else httpx.post
    kwargs = {} if method is httpx.get else {"json": {"messages": HI, "message": "Hi"}}
    response = method(
        f"{world.url}{path}", headers={"Authorization": f"Bearer {world.alice_key}"}, **kwargs
    )
    assert response.status_code == 503
    assert response.json() == {"error": "feature_disabled"}


def test_it_serves_botservers_inference_alias(world):
    response = _post(
        world, path="/api/v1/ai/inference", json={"model": "acme-chat", "messages": HI}
    )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


def test_it_accepts_a_browser_session_with_its_csrf_token(world, alice):
    client = session_client(alice, world.url)
    assert client.post("/v1/chat/completions", json={"messages": HI}).status_code == 200


def test_it_refuses_a_browser_session_post_without_csrf(world, alice):
    client = session_client(alice, world.url)
    del client.headers["X-CSRFToken"]
    response = client.post("/v1/chat/completions", json={"messages": HI})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


def test_it_refuses_a_host_outside_allowed_hosts_with_an_envelope(world, settings):
    settings.ALLOWED_HOSTS = ["gateway.example"]
    response = _post(world, json={"messages": HI})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_host"


def test_it_stamps_the_key_as_used(world):
    assert _post(world, json={"messages": HI}).status_code == 200
    wait_for_usage(1)
    key = APIKey.objects.get(name="alice")
    assert key.last_used_at is not None
    assert APIKey.objects.get(name="bob").last_used_at is None
