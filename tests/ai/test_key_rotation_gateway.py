"""Key rotation through the real gateway: the old secret works beside the new one for its
grace period (either header), on the same key; it stops when the period ends, at a second
rotation, or when the key is revoked."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from accounts.models import APIKey
from accounts.services import apikey_create
from panel.localcache import bump_generation
from tests.ai.conftest import wait_for_usage
from tests.api.conftest import MANAGE

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def rotate(world, alice):
    """Rotates alice's proxy key through the management route; returns the new secret."""
    manage = apikey_create(user=alice, name="manage", permissions=MANAGE)[1]
    key = APIKey.objects.get(name="alice")

    def call(**body) -> str:
        response = httpx.post(
            f"{world.url}/api/v1/auth/keys/{key.pk}/rotate",
            headers={"Authorization": f"Bearer {manage}"},
            json=body,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["id"] == key.pk
        return response.json()["key"]

    return call


def _chat(world, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers=headers,
        json={"model": "acme-chat", "messages": HI},
        timeout=30,
    )


def _both_headers(secret: str) -> list[dict[str, str]]:
    return [{"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}]


def _refused(response: httpx.Response, secret: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert secret not in response.text


def test_both_secrets_work_in_the_grace_period_and_bill_the_same_key(world, rotate):
    old = world.alice_key
    assert _chat(world, {"Authorization": f"Bearer {old}"}).status_code == 200  # cached now
    new = rotate(grace_seconds=3600)
    assert new != old
    for secret in (old, new):
        for headers in _both_headers(secret):
            assert _chat(world, headers).status_code == 200
    events = wait_for_usage(5)
    key = APIKey.objects.get(name="alice")
    assert len(events) == 5 and {e.api_key_id for e in events} == {key.pk}


def test_the_old_secret_stops_when_its_grace_period_ends(world, rotate):
    old = world.alice_key
    new = rotate(grace_seconds=3600)
    assert _chat(world, {"X-API-Key": old}).status_code == 200
    # Time travel: the grace period ends (an update sends no signal: invalidate by hand).
    past = timezone.now() - timedelta(seconds=1)
    APIKey.objects.filter(name="alice").update(previous_expires_at=past)
    bump_generation()
    for headers in _both_headers(old):
        _refused(_chat(world, headers), old)
    assert _chat(world, {"Authorization": f"Bearer {new}"}).status_code == 200


def test_a_zero_grace_period_stops_the_old_secret_at_once(world, rotate):
    old = world.alice_key
    assert _chat(world, {"X-API-Key": old}).status_code == 200  # cached before the rotation
    new = rotate(grace_seconds=0)
    for headers in _both_headers(old):
        _refused(_chat(world, headers), old)
    assert _chat(world, {"X-API-Key": new}).status_code == 200
    key = APIKey.objects.get(name="alice")
    assert (key.previous_hash, key.previous_expires_at) == (None, None)


def test_rotating_twice_stops_the_first_secret_at_once(world, rotate):
    first = world.alice_key
    second = rotate(grace_seconds=3600)
    assert _chat(world, {"X-API-Key": first}).status_code == 200
    third = rotate(grace_seconds=3600)
    _refused(_chat(world, {"Authorization": f"Bearer {first}"}), first)
    for secret in (second, third):
        assert _chat(world, {"Authorization": f"Bearer {secret}"}).status_code == 200


def test_revoking_a_rotated_key_stops_both_secrets(world, rotate, alice):
    old = world.alice_key
    new = rotate(grace_seconds=3600)
    manage = apikey_create(user=alice, name="manage2", permissions=MANAGE)[1]
    key = APIKey.objects.get(name="alice")
    response = httpx.delete(
        f"{world.url}/api/v1/auth/keys/{key.pk}",
        headers={"Authorization": f"Bearer {manage}"},
        timeout=30,
    )
    assert response.status_code == 204
    for secret in (old, new):
        _refused(_chat(world, {"X-API-Key": secret}), secret)
