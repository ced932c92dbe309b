"""The admin's Rotate button: a form, then POST-redirect-GET; the plain key is shown on one
page load only, and reloading that page rotates nothing."""

import pytest
from django.urls import reverse

from accounts.models import APIKey, hash_key
from accounts.services import apikey_create, apikey_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(bob):
    return apikey_create(user=bob, name="bob-script")


def _urls(key_id: int) -> tuple[str, str]:
    return (
        reverse("admin:accounts_apikey_rotate", args=[key_id]),
        reverse("admin:accounts_apikey_rotated", args=[key_id]),
    )


def test_the_change_page_links_to_the_rotate_form(admin_client, key, settings):
    settings.API_KEY_ROTATION_GRACE_SECONDS = 1234
    row, _ = key
    rotate, _ = _urls(row.pk)
    page = admin_client.get(reverse("admin:accounts_apikey_change", args=[row.pk]))
    assert rotate in page.content.decode()
    form = admin_client.get(rotate).content.decode()
    assert 'name="grace_seconds"' in form and 'value="1234"' in form


def test_it_rotates_then_shows_the_new_key_once(admin_client, key):
    row, old = key
    rotate, rotated = _urls(row.pk)
    response = admin_client.post(rotate, {"grace_seconds": 60})
    assert (response.status_code, response["Location"]) == (302, rotated)
    after_post = APIKey.objects.get(pk=row.pk)
    assert after_post.previous_hash == hash_key(old)
    page = admin_client.get(rotated)
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    plain = page.context["plain_key"]
    assert hash_key(plain) == after_post.key_hash and plain in page.content.decode()
    reload = admin_client.get(rotated, follow=True)
    assert plain not in reload.content.decode()
    assert "shown only once" in reload.content.decode()
    assert APIKey.objects.get(pk=row.pk).key_hash == after_post.key_hash  # not rotated again


def test_it_refuses_a_bad_grace_period_and_rotates_nothing(admin_client, key):
    row, old = key
    rotate, _ = _urls(row.pk)
    for grace in ("-1", "2592001", "soon", ""):
        response = admin_client.post(rotate, {"grace_seconds": grace})
        assert response.status_code == 200 and response.context["form"].errors
    assert APIKey.objects.get(pk=row.pk).key_hash == hash_key(old)


def test_it_refuses_to_rotate_a_revoked_key(admin_client, key):
    row, old = key
    apikey_revoke(key=row)
    rotate, _ = _urls(row.pk)
    change = reverse("admin:accounts_apikey_change", args=[row.pk])
    assert rotate not in admin_client.get(change).content.decode()
    response = admin_client.post(rotate, {"grace_seconds": 60}, follow=True)
    assert "revoked" in response.content.decode()
    assert APIKey.objects.get(pk=row.pk).key_hash == hash_key(old)


def test_a_user_without_the_change_permission_cannot_rotate(client, key, bob):
    row, old = key
    bob.is_staff = True
    bob.save()
    client.force_login(bob)
    rotate, _ = _urls(row.pk)
    assert client.post(rotate, {"grace_seconds": 60}).status_code == 403
    assert APIKey.objects.get(pk=row.pk).key_hash == hash_key(old)
