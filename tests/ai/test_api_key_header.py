"""X-API-Key (seed 003's security definition) works wherever Authorization: Bearer does:
the gateway's routes, /v1/models and the management API; two different keys are refused."""

import httpx
import pytest

from accounts.models import APIKey
from accounts.services import apikey_create
from tests.ai.conftest import wait_for_usage
from tests.api.conftest import MANAGE

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def routes(world, alice):
    """One request of each kind, by name: a call, a list and a management route."""
    manage_key = apikey_create(user=alice, name="manage", permissions=MANAGE)[1]

    def send(name: str, headers: dict[str, str]) -> httpx.Response:
        if name == "chat":
            return httpx.post(
                f"{world.url}/v1/chat/completions",
                headers=headers,
                json={"model": "acme-chat", "messages": HI},
                timeout=30,
            )
        path = "/v1/models" if name == "models" else "/api/v1/auth/keys"
        return httpx.get(f"{world.url}{path}", headers=headers, timeout=30)

    keys = {"chat": world.alice_key, "models": world.alice_key, "manage": manage_key}
    return send, keys


ROUTES = ["chat", "models", "manage"]


@pytest.mark.parametrize("route", ROUTES)
def test_it_accepts_the_key_in_x_api_key(routes, route, alice):
    send, keys = routes
    response = send(route, {"X-API-Key": keys[route]})
    assert response.status_code == 200, response.text
    if route == "chat":
        (event,) = wait_for_usage(1)
        assert event.api_key_id == APIKey.objects.get(name="alice").pk
    if route == "manage":
        assert {k["user_id"] for k in response.json()["results"]} == {alice.pk}


@pytest.mark.parametrize("route", ROUTES)
def test_it_accepts_the_same_key_in_both_headers(routes, route):
    send, keys = routes
    headers = {"X-API-Key": keys[route], "Authorization": f"Bearer {keys[route]}"}
    assert send(route, headers).status_code == 200


@pytest.mark.parametrize("route", ROUTES)
def test_it_refuses_two_different_keys(routes, route, world, fake_upstream):
    send, keys = routes
    other = world.bob_key
    for headers in (
        {"Authorization": f"Bearer {keys[route]}", "X-API-Key": other},
        {"Authorization": f"Bearer {other}", "X-API-Key": keys[route]},
    ):
        response = send(route, headers)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert "different API keys" in error["message"]
        assert keys[route] not in response.text and other not in response.text
    assert fake_upstream.requests() == []


@pytest.mark.parametrize("route", ROUTES)
def test_it_refuses_a_wrong_key_in_x_api_key(routes, route):
    send, _ = routes
    for value in ("sb-" + "x" * 43, "not a key", "Bearer sb-whatever"):
        response = send(route, {"X-API-Key": value})
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_without_any_key_the_gateway_names_both_headers(routes):
    send, _ = routes
    for headers in ({}, {"X-API-Key": ""}):
        response = send("chat", headers)
        assert response.status_code == 401
        message = response.json()["error"]["message"]
        assert "Authorization: Bearer" in message and "X-API-Key" in message


def test_a_revoked_key_in_x_api_key_is_refused(routes, world):
    send, _ = routes
    key, plain = apikey_create(user=APIKey.objects.get(name="alice").user, name="gone")
    assert send("chat", {"X-API-Key": plain}).status_code == 200
    key.is_revoked = True
    key.save()
    response = send("manage", {"X-API-Key": plain})
    assert response.status_code == 401
