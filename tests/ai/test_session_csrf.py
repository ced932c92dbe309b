"""Sessions (seed 000's curl examples send only a session cookie): a browser session's POST
needs its CSRF token, on the panel routes, the gateway and the management API alike; the
refusal is a 403 envelope telling scripts to use an API key, which needs no token."""

import httpx
import pytest

from accounts.models import APIKey
from tests.ai.conftest import session_client

pytestmark = pytest.mark.django_db(transaction=True)

POSTS = [
    ("/api/ai/chat", {"message": "Hi"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    ("/api/v1/auth/keys", {"name": "from-a-cookie"}),
]
IDS = ["panel-chat", "gateway", "management"]


@pytest.mark.parametrize(("path", "body"), POSTS, ids=IDS)
def test_a_session_post_without_its_csrf_token_is_told_to_use_an_api_key(
    world, alice, fake_upstream, path, body
):
    client = session_client(alice, world.url)
    del client.headers["X-CSRFToken"]
    response = client.post(path, json=body)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "csrf_failed")
    assert "API key" in error["message"] and "Authorization: Bearer" in error["message"]
    assert fake_upstream.requests() == []
    assert not APIKey.objects.filter(name="from-a-cookie").exists()


@pytest.mark.parametrize(("path", "body"), POSTS, ids=IDS)
def test_a_session_post_with_its_csrf_token_is_served(world, alice, path, body):
    response = session_client(alice, world.url).post(path, json=body)
    assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize(("path", "body"), POSTS[:2], ids=IDS[:2])
def test_a_script_with_an_api_key_needs_no_csrf_token(world, path, body):
    headers = {"Authorization": f"Bearer {world.alice_key}"}
    response = httpx.post(f"{world.url}{path}", headers=headers, json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_a_session_read_needs_no_csrf_token(world, alice):
    client = session_client(alice, world.url)
    del client.headers["X-CSRFToken"]
    assert client.get("/api/ai/models").status_code == 200
    assert client.get("/api/v1/auth/keys").status_code == 200
