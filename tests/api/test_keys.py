"""/api/v1/auth/keys (seed 003): own keys only, the plain key once, never a hash."""

import time

from accounts.models import APIKey, Permission, hash_key
from accounts.services import apikey_create
from tests.api.conftest import as_key


def test_it_returns_the_plain_key_once_and_stores_only_its_hash(api, keys, alice):
    client = as_key(api, keys["alice"])
    response = client.post("/api/v1/auth/keys", {"name": "script"}, format="json")
    assert response.status_code == 201
    body = response.json()
    key = APIKey.objects.get(pk=body["id"])
    assert key.key_hash == hash_key(body["key"]) and body["key"].startswith(key.prefix)
    assert body["permissions"] == ["proxy", "read"] and body["permission_mode"] == "allow_all"
    listed = client.get("/api/v1/auth/keys").content.decode()
    detail = client.get(f"/api/v1/auth/keys/{key.pk}").content.decode()
    for text in (listed, detail):
        assert body["key"] not in text and key.key_hash not in text
        assert '"key"' not in text and "key_hash" not in text


def test_it_lists_only_the_callers_keys(api, keys, registry, alice, bob):
    listed = as_key(api, keys["alice"]).get("/api/v1/auth/keys").json()["results"]
    assert {k["user_id"] for k in listed} == {alice.pk}
    everyone = as_key(api, keys["staff"]).get(f"/api/v1/auth/keys?user={bob.pk}").json()
    assert {k["user_id"] for k in everyone["results"]} == {bob.pk}
    assert registry.bob_key.pk in [k["id"] for k in everyone["results"]]


def test_it_lets_staff_create_a_key_for_a_member_of_an_org(api, keys, registry, bob):
    body = {
        "name": "bob's proxy",
        "user_id": bob.pk,
        "organisation": "acme",
        "permissions": ["proxy"],
        "allowed_models": [registry.model.pk],
        "expires_at": int(time.time()) + 3600,
    }
    response = as_key(api, keys["staff"]).post("/api/v1/auth/keys", body, format="json")
    assert response.status_code == 201, response.content
    key = APIKey.objects.get(pk=response.json()["id"])
    assert (key.user, key.organisation.slug, key.permissions) == (bob, "acme", ["proxy"])
    assert list(key.allowed_models.all()) == [registry.model]
    # Narrowed to a model, the key still has instance permissions of its own.
    assert response.json()["permission_mode"] == "allow_all"
    assert response.json()["allowed_models"] == [registry.model.pk]


def test_it_refuses_a_key_for_someone_else_without_saying_who_exists(api, keys, bob):
    client = as_key(api, keys["charlie"])
    for user_id in (bob.pk, 99999):
        body = {"name": "x", "user_id": user_id}
        response = client.post("/api/v1/auth/keys", body, format="json")
        assert (response.status_code, response.json()["error"]["param"]) == (400, "user_id")
        assert response.json()["error"]["message"] == "Unknown user."
    assert not APIKey.objects.filter(name="x").exists()


def test_it_refuses_an_org_the_owner_does_not_belong_to(api, keys, acme):
    body = {"name": "x", "organisation": "acme"}
    response = as_key(api, keys["charlie"]).post("/api/v1/auth/keys", body, format="json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "organisation")


def test_it_refuses_unknown_permissions_naming_the_field(api, keys):
    body = {"name": "x", "permissions": ["read", "root"]}
    response = as_key(api, keys["bob"]).post("/api/v1/auth/keys", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "permissions.1"


def test_it_revokes_a_deleted_key_at_once(api, keys, registry, bob):
    _, plain = apikey_create(user=bob, name="temp", permissions=[Permission.MANAGE])
    client = as_key(api, keys["bob"])
    key_id = APIKey.objects.get(name="temp").pk
    assert client.delete(f"/api/v1/auth/keys/{key_id}").status_code == 204
    assert APIKey.objects.get(pk=key_id).is_revoked
    assert client.get(f"/api/v1/auth/keys/{key_id}").status_code == 404
    assert as_key(api, plain).get("/api/v1/auth/keys").status_code == 401


def test_it_replaces_a_keys_permissions_and_models(api, keys, registry):
    url = f"/api/v1/auth/keys/{registry.bob_key.pk}/permissions"
    body = {"permissions": ["read"], "allowed_models": [registry.model.pk]}
    response = as_key(api, keys["bob"]).put(url, body, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["id"], body["permissions"]) == (registry.bob_key.pk, ["read"])
    assert (body["allowed_models"], body["permission_mode"]) == ([registry.model.pk], "allow_all")
    registry.bob_key.refresh_from_db()
    assert registry.bob_key.permissions == ["read"]


def test_it_refuses_revoked_and_unknown_keys(api, keys, charlie):
    key, plain = apikey_create(user=charlie, name="gone", permissions=[Permission.MANAGE])
    key.is_revoked = True
    key.save()
    for token in (plain, "sb-unknown"):
        response = as_key(api, token).get("/api/v1/auth/keys")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_it_accepts_a_session_and_wants_csrf_for_writes(charlie):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(charlie)
    assert client.get("/api/v1/auth/keys").status_code == 200
    response = client.post("/api/v1/auth/keys", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert not APIKey.objects.filter(name="x").exists()
