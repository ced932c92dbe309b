"""Optional TOTP two-factor authentication (django-allauth's mfa): activate with a code
computed here from the secret the page shows, then sign-in asks for a code; recovery codes
work once; deactivate. The admin's own login goes through the same sign-in."""

import base64
import re

import pytest
from allauth.mfa.models import Authenticator

from accounts.services import user_email_vouch
from tests.accounts.allauth_helpers import PASSWORD, fresh_totp, sign_in, signed_in_user, totp

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_cache")]

CHALLENGE = "/accounts/2fa/authenticate/"


def other_code(secret: str) -> str:
    """A well-formed code that no nearby step accepts."""
    near = {totp(secret, step_offset=k) for k in range(-2, 3)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


def _reauthenticate(client, then: str) -> None:
    """allauth asks for the password again before two-factor settings change."""
    asked = client.get(then)
    assert asked.status_code == 302 and asked["Location"].startswith("/accounts/reauthenticate/")
    done = client.post(asked["Location"], {"password": PASSWORD})
    assert done.status_code == 302 and done["Location"] == then


def _activate_totp(client) -> str:
    _reauthenticate(client, "/accounts/2fa/totp/activate/")
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = re.search(r'id="authenticator_secret"[^>]*value="([A-Z2-7]+)"', page.content.decode())
    response = client.post("/accounts/2fa/totp/activate/", {"code": fresh_totp(secret.group(1))})
    assert response.status_code == 302, response.content.decode()[:3000]
    return secret.group(1)


def _recovery_codes(client) -> list[str]:
    page = client.get("/accounts/2fa/recovery-codes/").content.decode()
    box = re.search(r'<textarea[^>]*id="recovery_codes"[^>]*>(.*?)</textarea>', page, re.S)
    return box.group(1).split()


@pytest.fixture
def alice_with_totp(client, alice):
    """alice signed in, TOTP activated; returns (secret, recovery codes) signed out."""
    user_email_vouch(user=alice)
    assert sign_in(client, "alice").status_code == 302
    secret = _activate_totp(client)
    codes = _recovery_codes(client)
    client.post("/accounts/logout/")
    assert signed_in_user(client) is None
    return secret, codes


def test_totp_matches_rfc_6238s_test_vector():
    # RFC 6238 appendix B: the SHA-1 secret "12345678901234567890" at T=59 s is 94287082.
    assert totp(base64.b32encode(b"12345678901234567890").decode(), at=59) == "287082"


def test_activating_totp_makes_sign_in_ask_for_a_code(client, alice, alice_with_totp):
    secret, codes = alice_with_totp
    assert Authenticator.objects.filter(user=alice, type=Authenticator.Type.TOTP).exists()
    assert len(codes) >= 8

    response = sign_in(client, "alice")
    assert response.status_code == 302 and response["Location"] == CHALLENGE
    assert signed_in_user(client) is None
    page = client.get(CHALLENGE)
    assert 'class="auth-card"' in page.content.decode()
    assert 'name="code"' in page.content.decode()

    wrong = client.post(CHALLENGE, {"code": other_code(secret)})
    assert wrong.status_code == 200
    assert "Incorrect code." in wrong.content.decode()
    assert signed_in_user(client) is None

    right = client.post(CHALLENGE, {"code": fresh_totp(secret)})
    assert right.status_code == 302 and right["Location"] == "/chat/"
    assert signed_in_user(client) == alice


def test_a_totp_code_signs_in_only_once(client, alice, alice_with_totp):
    secret, _ = alice_with_totp
    code = fresh_totp(secret)
    sign_in(client, "alice")
    assert client.post(CHALLENGE, {"code": code}).status_code == 302
    client.post("/accounts/logout/")
    sign_in(client, "alice")
    assert client.post(CHALLENGE, {"code": code}).status_code == 200
    assert signed_in_user(client) is None


def test_a_recovery_code_signs_in_once(client, alice, alice_with_totp):
    _, codes = alice_with_totp
    sign_in(client, "alice")
    assert client.post(CHALLENGE, {"code": codes[0]}).status_code == 302
    assert signed_in_user(client) == alice
    client.post("/accounts/logout/")

    sign_in(client, "alice")
    again = client.post(CHALLENGE, {"code": codes[0]})
    assert again.status_code == 200 and "Incorrect code." in again.content.decode()
    assert signed_in_user(client) is None


def test_deactivating_totp_ends_the_second_step(client, alice, alice_with_totp):
    _, codes = alice_with_totp
    sign_in(client, "alice")
    client.post(CHALLENGE, {"code": codes[1]})
    _reauthenticate(client, "/accounts/2fa/totp/deactivate/")
    page = client.get("/accounts/2fa/totp/deactivate/")
    assert page.status_code == 200
    response = client.post("/accounts/2fa/totp/deactivate/")
    assert response.status_code == 302
    assert not Authenticator.objects.filter(user=alice).exists()
    client.post("/accounts/logout/")
    response = sign_in(client, "alice")
    assert response.status_code == 302 and response["Location"] == "/chat/"


@pytest.mark.parametrize(
    "code",
    ["9" * 100_000, "12345\x00", "", "abcdef", ["1", "2"]],
    ids=["huge", "nul", "empty", "letters", "list"],
)
def test_odd_codes_get_a_form_error_not_a_500(client, alice, alice_with_totp, code):
    sign_in(client, "alice")
    response = client.post(CHALLENGE, {"code": code})
    assert response.status_code == 200
    assert signed_in_user(client) is None


def test_an_account_deleted_between_password_and_code_is_not_signed_in(
    client, alice, alice_with_totp
):
    secret, _ = alice_with_totp
    sign_in(client, "alice")
    alice.delete()
    response = client.post(CHALLENGE, {"code": fresh_totp(secret)})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert signed_in_user(client) is None


def test_the_security_pages_use_the_account_bar(client, alice):
    user_email_vouch(user=alice)
    sign_in(client, "alice")
    for path in ["/accounts/2fa/", "/accounts/password/change/", "/accounts/email/"]:
        page = client.get(path).content.decode()
        assert 'class="account-bar"' in page, path
        assert re.search(r'aria-current="page">Security</a>', page), path


# --- The admin's login -----------------------------------------------------------------


def test_the_admin_login_page_sends_visitors_to_the_sign_in_page(client, superuser):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Fadmin%2F"
    # Posting a password to the admin's own form signs nobody in.
    posted = client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert posted.status_code == 302 and posted["Location"].startswith("/accounts/login/")
    assert signed_in_user(client) is None


def test_a_staff_member_with_totp_cannot_reach_the_admin_without_the_code(client, superuser):
    assert sign_in(client, "root").status_code == 302
    secret = _activate_totp(client)
    client.post("/accounts/logout/")

    response = client.post("/accounts/login/?next=/admin/", {"login": "root", "password": PASSWORD})
    assert response["Location"] == CHALLENGE
    assert client.get("/admin/").status_code == 302  # not signed in yet
    assert client.post("/admin/login/", {"username": "root", "password": PASSWORD})[
        "Location"
    ].startswith("/accounts/login/")
    assert signed_in_user(client) is None

    done = client.post(CHALLENGE, {"code": fresh_totp(secret)})
    assert done.status_code == 302 and done["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_signed_in_non_staff_user_gets_403_at_the_admin_login(client, alice):
    client.force_login(alice)
    assert client.get("/admin/login/").status_code == 403
