"""Password reset by e-mail (django-allauth): the same answer for an unknown address, a link
that works once and expires, the new password in and the old one out."""

import time

import pytest
from django.core import mail

from accounts.services import user_email_vouch
from tests.accounts.allauth_helpers import PASSWORD, link_in_last_mail, sign_in, signed_in_user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_cache")]

NEW_PASSWORD = "a brand new passphrase 7"


@pytest.fixture
def alice(alice):
    """alice's address on record as verified (an operator's account: migration 0007, the
    admin's form or admin_ensure)."""
    assert user_email_vouch(user=alice)
    return alice


def _request_reset(client, email):
    return client.post("/accounts/password/reset/", {"email": email}, follow=True)


def _set_password(client, link, password=NEW_PASSWORD):
    """Open the mailed link (allauth keeps the key in the session and redirects) and post
    the new password; returns the final response."""
    opened = client.get(link, follow=True)
    assert opened.status_code == 200
    form_url = opened.redirect_chain[-1][0] if opened.redirect_chain else link
    return client.post(form_url, {"password1": password, "password2": password}, follow=True)


def test_it_answers_the_same_for_an_unknown_address(client, alice):
    known = _request_reset(client, "alice@example.com")
    unknown = _request_reset(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.redirect_chain == unknown.redirect_chain
    assert known.content == unknown.content
    # The known address gets a link; the unknown one a note that no account uses it.
    assert "/accounts/password/reset/key/" in mail.outbox[0].body
    assert mail.outbox[1].to == ["nobody@example.com"]
    assert "/accounts/password/reset/key/" not in mail.outbox[1].body


def test_the_link_sets_a_new_password_once_and_the_old_one_stops_working(client, alice):
    _request_reset(client, "alice@example.com")
    link = link_in_last_mail("alice@example.com")

    done = _set_password(client, link)
    assert done.status_code == 200
    assert "Your password is now changed." in done.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)

    client.logout()
    assert sign_in(client, "alice", PASSWORD).status_code == 200
    assert signed_in_user(client) is None
    assert sign_in(client, "alice", NEW_PASSWORD).status_code == 302
    assert signed_in_user(client) == alice

    # Used once: the same link is refused and the password stays.
    client.logout()
    again = _set_password(client, link, password="yet another passphrase 9")
    assert "Bad Token" in again.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)


def test_an_expired_link_is_refused(client, alice, settings):
    settings.PASSWORD_RESET_TIMEOUT = 1
    _request_reset(client, "alice@example.com")
    link = link_in_last_mail("alice@example.com")
    time.sleep(2.1)
    refused = _set_password(client, link)
    assert "Bad Token" in refused.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_a_link_for_an_account_deleted_since_is_refused_not_a_500(client, alice):
    _request_reset(client, "alice@example.com")
    link = link_in_last_mail("alice@example.com")
    alice.delete()
    refused = _set_password(client, link)
    assert refused.status_code == 200
    assert "Bad Token" in refused.content.decode()


def test_a_mangled_link_is_refused_not_a_500(client, alice):
    for path in [
        "/accounts/password/reset/key/zzzzzzzzzzzzzzzz-nonsense/",
        "/accounts/password/reset/key/1-" + "x" * 5000 + "/",
    ]:
        response = client.get(path, follow=True)
        assert response.status_code in (200, 404)
        assert response.status_code == 404 or "Bad Token" in response.content.decode()


@pytest.mark.parametrize(
    "email", ["x" * 100_000 + "@example.com", "alice@example.com\x00", "not an address", ""]
)
def test_odd_reset_input_gets_a_form_error_not_a_500(client, alice, email):
    response = client.post("/accounts/password/reset/", {"email": email})
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert mail.outbox == []


def test_a_new_password_that_fails_the_validators_is_refused(client, alice):
    _request_reset(client, "alice@example.com")
    refused = _set_password(client, link_in_last_mail("alice@example.com"), password="123")
    assert "errorlist" in refused.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)
