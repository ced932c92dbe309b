"""POST /api/v1/auth/keys/{id}/rotate: a new secret for the same key, shown once; the old
secret's grace period; refusals in the envelope; and the cached snapshot's own expiry."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import RequestFactory
from django.utils import timezone

from accounts import selectors
from accounts.authentication import authenticate
from accounts.models import APIKey, hash_key
from accounts.services import apikey_create, apikey_revoke, apikey_rotate
from panel.errors import AuthenticationFailed
from panel.localcache import registry_cache
from tests.api.conftest import as_key

pytestmark = pytest.mark.django_db

MONTH = 30 * 24 * 3600


@pytest.fixture
def proxy_key(registry, alice):
    key, plain = apikey_create(
        user=alice,
        name="alice-proxy",
        permissions=["proxy"],
        allowed_models=[registry.model],
    )
    APIKey.objects.filter(pk=key.pk).update(requests_per_minute=7)
    return APIKey.objects.get(pk=key.pk), plain


def _rotate(api, manage_key: str, key_id: int, body=None):
    url = f"/api/v1/auth/keys/{key_id}/rotate"
    return as_key(api, manage_key).post(url, body or {}, format="json")


def _gateway(token: str):
    request = RequestFactory().post("/v1/chat/completions", HTTP_AUTHORIZATION=f"Bearer {token}")
    return async_to_sync(authenticate)(request, permission="proxy")


def test_it_gives_the_key_a_new_secret_shown_once_and_keeps_everything_else(
    api, keys, proxy_key, registry, settings
):
    settings.API_KEY_ROTATION_GRACE_SECONDS = 600
    key, old = proxy_key
    response = _rotate(api, keys["alice"], key.pk)
    assert response.status_code == 200, response.content
    body = response.json()
    rotated = APIKey.objects.get(pk=key.pk)
    assert rotated.key_hash == hash_key(body["key"]) and body["key"].startswith(rotated.prefix)
    assert rotated.previous_hash == hash_key(old) and rotated.previous_prefix == key.prefix
    assert (body["id"], body["name"], body["permissions"]) == (key.pk, "alice-proxy", ["proxy"])
    assert body["allowed_models"] == [registry.model.pk] and rotated.requests_per_minute == 7
    assert body["previous_prefix"] == key.prefix and body["rotated_at"] is not None
    grace = rotated.previous_expires_at - rotated.rotated_at
    assert grace == timedelta(seconds=600)
    assert body["previous_expires_at"] == int(rotated.previous_expires_at.timestamp())
    detail = as_key(api, keys["alice"]).get(f"/api/v1/auth/keys/{key.pk}").content.decode()
    for secret in (body["key"], old, rotated.key_hash, rotated.previous_hash):
        assert secret not in detail
    assert '"key"' not in detail


def test_both_secrets_authenticate_the_management_api_until_the_grace_period_ends(api, keys, alice):
    key, old = apikey_create(user=alice, name="script", permissions=["read", "manage"])
    new = _rotate(api, keys["alice"], key.pk, {"grace_seconds": 60}).json()["key"]
    for secret in (old, new):
        assert as_key(api, secret).get("/api/v1/auth/keys").status_code == 200
    past = timezone.now() - timedelta(seconds=1)
    APIKey.objects.filter(pk=key.pk).update(previous_expires_at=past)
    response = as_key(api, old).get("/api/v1/auth/keys")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert as_key(api, new).get("/api/v1/auth/keys").status_code == 200


def test_the_cached_old_secret_stops_when_its_grace_period_ends_without_invalidation(
    alice, monkeypatch, django_assert_num_queries
):
    monkeypatch.setattr(registry_cache, "clock", lambda: 1000.0)  # nothing expires by age
    key, old = apikey_create(user=alice, name="cached")
    key, new = apikey_rotate(key=key, grace_seconds=60)
    registry_cache.clear()
    assert _gateway(old).key.id == _gateway(new).key.id == key.pk  # both cached now
    later = timezone.now() + timedelta(seconds=61)
    monkeypatch.setattr(selectors.timezone, "now", lambda: later)
    monkeypatch.setattr(selectors.conf, "now", lambda: later)  # the request path's clock
    with django_assert_num_queries(0):
        with pytest.raises(AuthenticationFailed):
            _gateway(old)
        assert _gateway(new).key.id == key.pk


def test_the_old_secret_stops_at_the_grace_periods_end_or_the_keys_expiry_if_sooner(alice):
    soon = timezone.now() + timedelta(seconds=30)
    short, short_old = apikey_create(user=alice, name="short", expires_at=soon)
    apikey_rotate(key=short, grace_seconds=3600)
    long, long_old = apikey_create(user=alice, name="long", expires_at=soon + timedelta(days=9))
    long, _ = apikey_rotate(key=long, grace_seconds=60)
    registry_cache.clear()
    assert _gateway(short_old).key.expires_at == soon
    assert _gateway(long_old).key.expires_at == long.previous_expires_at


def test_it_takes_the_longest_grace_period_allowed(api, keys, proxy_key):
    key, _ = proxy_key
    response = _rotate(api, keys["alice"], key.pk, {"grace_seconds": MONTH})
    assert response.status_code == 200
    rotated = APIKey.objects.get(pk=key.pk)
    assert rotated.previous_expires_at - rotated.rotated_at == timedelta(seconds=MONTH)


def test_it_refuses_to_rotate_a_revoked_key(api, keys, proxy_key):
    key, _ = proxy_key
    apikey_revoke(key=key)
    response = _rotate(api, keys["alice"], key.pk)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "key_revoked" and "revoked" in error["message"]
    assert APIKey.objects.get(pk=key.pk).key_hash == key.key_hash


def test_an_outsider_cannot_rotate_someone_elses_key(api, keys, proxy_key):
    key, old = proxy_key
    for key_id in (key.pk, 999999):
        response = _rotate(api, keys["charlie"], key_id)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    apikey_revoke(key=key)
    assert _rotate(api, keys["charlie"], key.pk).status_code == 404  # revoked: still 404
    assert APIKey.objects.get(pk=key.pk).key_hash == hash_key(old)


def test_staff_may_rotate_any_key(api, keys, proxy_key):
    key, _ = proxy_key
    assert _rotate(api, keys["staff"], key.pk).status_code == 200


def test_a_key_without_the_manage_permission_cannot_rotate(api, proxy_key):
    key, plain = proxy_key
    response = _rotate(api, plain, key.pk)
    assert response.status_code == 403
    assert APIKey.objects.get(pk=key.pk).key_hash == hash_key(plain)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"grace_seconds": -1}, "grace_seconds"),
        ({"grace_seconds": MONTH + 1}, "grace_seconds"),
        ({"grace_seconds": 10**30}, "grace_seconds"),
        ({"grace_seconds": "60"}, "grace_seconds"),
        ({"grace_seconds": 1.5}, "grace_seconds"),
        ({"grace_seconds": True}, "grace_seconds"),
        ({"grace_seconds": None}, "grace_seconds"),
        ({"grace": 60}, "grace"),
    ],
    ids=["negative", "over-30-days", "huge", "string", "float", "bool", "null", "unknown"],
)
def test_it_refuses_a_bad_grace_period_in_the_envelope(api, keys, proxy_key, body, param):
    key, plain = proxy_key
    response = _rotate(api, keys["alice"], key.pk, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert APIKey.objects.get(pk=key.pk).key_hash == hash_key(plain)
