from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import APIKey, Permission, hash_key
from accounts.selectors import apikey_verify
from accounts.services import apikey_create, apikey_revoke
from tests.factories import AIModelFactory

pytestmark = pytest.mark.django_db


def test_it_returns_the_plain_key_once_and_stores_only_its_hash(alice):
    key, plain = apikey_create(user=alice, name="ci")
    assert plain.startswith("sb-")
    assert len(plain) >= 3 + 43  # 32 random bytes, url-safe base64
    assert key.key_hash == hash_key(plain)
    assert key.prefix == plain[:12]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey WHERE id = %s", [key.pk])
        row = cursor.fetchone()
    assert plain not in [str(value) for value in row]
    assert not hasattr(APIKey.objects.get(pk=key.pk), "plain")


def test_it_gives_each_key_a_different_secret(alice):
    plains = {apikey_create(user=alice, name=f"k{i}")[1] for i in range(5)}
    assert len(plains) == 5


def test_it_verifies_the_right_key(alice):
    key, plain = apikey_create(user=alice, name="ci")
    assert apikey_verify(plain=plain) == key


@pytest.mark.parametrize("wrong", ["", "sb-", "sb-not-a-key", "Bearer x", "sk-abc"])
def test_it_rejects_a_wrong_key(alice, wrong):
    apikey_create(user=alice, name="ci")
    assert apikey_verify(plain=wrong) is None


def test_it_rejects_a_key_that_differs_by_one_character(alice):
    _, plain = apikey_create(user=alice, name="ci")
    tampered = plain[:-1] + ("A" if plain[-1] != "A" else "B")
    assert apikey_verify(plain=tampered) is None


def test_it_rejects_a_revoked_key(alice):
    key, plain = apikey_create(user=alice, name="ci")
    apikey_revoke(key=key)
    assert apikey_verify(plain=plain) is None


def test_it_rejects_an_expired_key(alice):
    _, plain = apikey_create(
        user=alice, name="ci", expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert apikey_verify(plain=plain) is None


def test_it_accepts_a_key_until_it_expires(alice):
    _, plain = apikey_create(user=alice, name="ci", expires_at=timezone.now() + timedelta(hours=1))
    assert apikey_verify(plain=plain) is not None


def test_it_rejects_the_key_of_a_deactivated_user(alice):
    _, plain = apikey_create(user=alice, name="ci")
    alice.is_active = False
    alice.save()
    assert apikey_verify(plain=plain) is None


def test_it_records_permissions_and_allowed_models(alice, acme):
    model = AIModelFactory()
    key, _ = apikey_create(
        user=alice,
        organisation=acme,
        name="scoped",
        permissions=[Permission.PROXY],
        allowed_models=[model],
    )
    key.refresh_from_db()
    assert key.permissions == ["proxy"]
    assert key.has_permission("proxy") and not key.has_permission("read")
    assert list(key.allowed_models.all()) == [model]
    assert key.organisation == acme


def test_it_refuses_unknown_permissions(alice):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        apikey_create(user=alice, name="bad", permissions=["root"])
    assert not APIKey.objects.exists()
