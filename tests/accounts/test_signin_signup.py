"""Sign-in and sign-up through django-allauth: the styled pages, sign-up off by default and
opened by the site setting, mandatory e-mail verification, operators' accounts, rate limits."""

import re
from importlib import import_module

import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialApp
from django.apps import apps as django_apps
from django.contrib.sites.models import Site
from django.core import mail
from django.core.cache import cache
from django.core.management import call_command

from accounts.models import User
from accounts.services import admin_ensure
from panel.models import SiteSettings
from tests.accounts.allauth_helpers import PASSWORD, link_in_last_mail, sign_in, signed_in_user
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_cache")]

NEW = {
    "email": "dana@example.com",
    "username": "dana",
    "password1": "a long passphrase 42",
    "password2": "a long passphrase 42",
}


@pytest.fixture
def signup_open(db):
    settings_row = SiteSettings.load()
    settings_row.allow_signup = True
    settings_row.save()


def test_the_sign_in_page_asks_for_a_username_or_email_and_offers_a_reset(client):
    response = client.get("/accounts/login/")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'name="login"' in html and 'name="password"' in html
    assert 'class="auth-card"' in html
    assert "Forgot password?" in html and 'href="/accounts/password/reset/"' in html
    assert "Sign up" not in html  # sign-up is closed by default


def test_the_sign_in_page_offers_sign_up_only_while_it_is_open(client, signup_open):
    html = client.get("/accounts/login/").content.decode()
    assert 'href="/accounts/signup/">Sign up</a>' in html
    form = client.get("/accounts/signup/").content.decode()
    assert 'class="auth-card"' in form
    for name in ("email", "username", "password1", "password2"):
        assert f'name="{name}"' in form


def test_the_sign_in_page_lists_the_configured_sso_providers(client):
    app = SocialApp.objects.create(
        provider="openid_connect",
        provider_id="company-idp",
        name="Company IdP",
        client_id="switchboard",
        secret="not-shown",
        settings={"server_url": "https://idp.example.com"},
    )
    app.sites.add(Site.objects.get_current())
    html = client.get("/accounts/login/").content.decode()
    assert re.search(
        r'<ul class="sso"[^>]*>\s*<li>\s*<a title="Company IdP" href="[^"]*company-idp', html
    )
    assert "not-shown" not in html


def test_it_answers_sign_up_closed_by_default_and_makes_no_account(client):
    assert SiteSettings.load().allow_signup is False
    page = client.get("/accounts/signup/")
    posted = client.post("/accounts/signup/", NEW)
    for response in (page, posted):
        assert response.status_code == 200
        assert "Sign Up Closed" in response.content.decode()
        assert 'class="auth-card"' in response.content.decode()
    assert not User.objects.filter(username="dana").exists()
    assert mail.outbox == []


def test_it_lets_a_stranger_sign_up_confirm_the_address_and_then_sign_in(client, signup_open):
    response = client.post("/accounts/signup/", NEW)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    user = User.objects.get(username="dana")
    assert EmailAddress.objects.get(user=user).verified is False
    assert signed_in_user(client) is None
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["dana@example.com"]
    assert mail.outbox[0].subject.startswith("[Switchboard] ")
    assert "Switchboard" in mail.outbox[0].body and "example.com!" not in mail.outbox[0].body
    confirm = link_in_last_mail("dana@example.com")

    # Before confirming: refused, with a page that says why, and no session.
    refused = sign_in(client, "dana", NEW["password1"], follow=True)
    assert signed_in_user(client) is None
    assert "Confirm your e-mail address" in refused.content.decode()
    assert "before you can sign in" in refused.content.decode()

    assert client.get(confirm).status_code == 200
    assert client.post(confirm).status_code == 302
    assert EmailAddress.objects.get(user=user).verified is True

    response = sign_in(client, "dana@example.com", NEW["password1"])
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert signed_in_user(client) == user


def test_it_refuses_a_second_account_for_an_address_already_taken(client, signup_open, alice):
    admin_ensure(username="root", email="root@example.com", password=PASSWORD)
    response = client.post("/accounts/signup/", {**NEW, "email": "ROOT@example.com"})
    # Enumeration-safe: the same answer as a new address, a mail to its owner, no account.
    assert response.status_code == 302
    assert not User.objects.filter(username="dana").exists()


def test_the_admin_can_open_sign_up_from_the_site_settings_list(client, superuser):
    row = SiteSettings.load()
    client.force_login(superuser)
    response = client.post(
        "/admin/panel/sitesettings/",
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-0-id": str(row.pk),
            "form-0-is_ai_enabled": "on",
            "form-0-allow_signup": "on",
            "_save": "Save",
        },
    )
    assert response.status_code == 302
    assert SiteSettings.load().allow_signup is True


def _signs_in_at_once(client, login):
    response = sign_in(client, login)
    assert response.status_code == 302, response.content.decode()[:500]
    assert response["Location"] == "/chat/"
    assert signed_in_user(client) is not None
    client.logout()


def test_users_who_existed_before_allauth_sign_in_without_confirming(client, alice):
    assert not EmailAddress.objects.filter(user=alice).exists()
    _signs_in_at_once(client, "alice")
    _signs_in_at_once(client, "alice@example.com")
    assert mail.outbox == []
    # Their address is now on record as verified: the operator vouched for it.
    address = EmailAddress.objects.get(user=alice)
    assert (address.email, address.verified, address.primary) == ("alice@example.com", True, True)


def test_migration_0007_records_the_addresses_of_existing_accounts_as_verified(client):
    vouch_existing_addresses = import_module(
        "accounts.migrations.0007_vouch_existing_addresses"
    ).vouch_existing_addresses
    old = UserFactory(username="old", email="Old@Example.com")
    twin = UserFactory(username="twin", email="old@example.com")
    bare = UserFactory(username="bare", email="")
    signed_up = UserFactory(username="signed-up", email="new@example.com")
    EmailAddress.objects.create(user=signed_up, email="new@example.com", verified=False)

    vouch_existing_addresses(django_apps, None)
    vouch_existing_addresses(django_apps, None)  # twice: nothing more

    address = EmailAddress.objects.get(user=old)
    assert (address.email, address.verified, address.primary) == ("old@example.com", True, True)
    assert not EmailAddress.objects.filter(user__in=[twin, bare]).exists()
    assert EmailAddress.objects.get(user=signed_up).verified is True
    # A reset mail's implicit, unverified row no longer stands in the way.
    client.post("/accounts/password/reset/", {"email": "old@example.com"})
    _signs_in_at_once(client, "old@example.com")


def test_an_account_without_any_address_signs_in_too(client):
    UserFactory(username="noemail", email="")
    _signs_in_at_once(client, "noemail")
    assert mail.outbox == []


def test_the_superuser_made_by_make_run_signs_in_without_confirming(client):
    user, created = admin_ensure(username="root", email="root@example.com", password=PASSWORD)
    assert created
    assert EmailAddress.objects.get(user=user).verified is True
    _signs_in_at_once(client, "root@example.com")
    assert mail.outbox == []


def test_a_createsuperuser_account_signs_in_without_confirming(client, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    call_command("createsuperuser", "--noinput", username="boss", email="boss@example.com")
    _signs_in_at_once(client, "boss")
    assert mail.outbox == []


def test_an_account_made_in_the_admin_signs_in_without_confirming(client, superuser):
    client.force_login(superuser)
    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "erin",
            "password1": "a long passphrase 42",
            "password2": "a long passphrase 42",
            "usable_password": "true",
            "email": "erin@example.com",
            "tier": "free",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    erin = User.objects.get(username="erin")
    assert EmailAddress.objects.get(user=erin, email="erin@example.com").verified is True
    client.logout()
    response = sign_in(client, "erin@example.com", "a long passphrase 42")
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert mail.outbox == []


def test_a_signed_up_user_whose_address_is_unconfirmed_is_not_taken_for_an_operators(
    client, signup_open
):
    client.post("/accounts/signup/", NEW)
    client.logout()
    sign_in(client, "dana", NEW["password1"])
    assert signed_in_user(client) is None
    assert EmailAddress.objects.get(user__username="dana").verified is False


def test_a_wrong_password_is_refused_with_the_form_not_a_500(client, alice):
    response = sign_in(client, "alice", "wrong")
    assert response.status_code == 200
    assert "not correct" in response.content.decode()
    assert signed_in_user(client) is None


@pytest.mark.parametrize(
    "data",
    [
        {"login": "a" * 100_000, "password": "p" * 100_000},
        {"login": "alice\x00", "password": PASSWORD},
        {"login": ["alice", "bob"], "password": [PASSWORD, "x"]},
        {"login": "", "password": ""},
        {},
    ],
    ids=["huge", "nul", "lists", "empty", "missing"],
)
def test_odd_sign_in_input_gets_a_form_error_not_a_500(client, alice, data):
    response = client.post("/accounts/login/", data)
    assert response.status_code == 200
    assert signed_in_user(client) is None


@pytest.mark.parametrize(
    "change",
    [
        {"email": "x" * 400 + "@example.com"},
        {"username": "u" * 10_000},
        {"username": "dana\x00"},
        {"email": "not an address"},
        {"password2": "something else 42"},
        {"password1": "1", "password2": "1"},
    ],
    ids=["huge-email", "huge-username", "nul-username", "bad-email", "mismatch", "weak"],
)
def test_odd_sign_up_input_gets_a_form_error_not_a_500(client, signup_open, change):
    response = client.post("/accounts/signup/", {**NEW, **change})
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert not User.objects.filter(email__iexact=NEW["email"]).exists()
    assert mail.outbox == []


def test_a_confirmation_link_for_an_account_deleted_since_is_refused_cleanly(client, signup_open):
    client.post("/accounts/signup/", NEW)
    confirm = link_in_last_mail("dana@example.com")
    User.objects.filter(username="dana").delete()
    assert client.get(confirm).status_code == 200
    response = client.post(confirm)
    assert response.status_code in (200, 404)
    assert "expired or is invalid" in client.get(confirm).content.decode()


def test_repeated_wrong_passwords_lock_the_account_out_for_a_while(client, alice):
    """allauth's login_failed limit (5 per account), counted in the cache."""
    for _ in range(5):
        sign_in(client, "alice", "wrong")
    response = sign_in(client, "alice", PASSWORD)
    assert response.status_code == 200
    assert "Too many failed login attempts" in response.content.decode()
    assert signed_in_user(client) is None
    cache.clear()  # the counters live in the cache: emptying it lets alice in again
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_a_flood_of_sign_in_attempts_gets_the_429_page_not_a_500(client):
    """allauth's login limit (30 a minute from one address), counted in the cache."""
    statuses = [sign_in(client, f"nobody{i}", "wrong").status_code for i in range(31)]
    assert statuses[:30] == [200] * 30
    assert statuses[30] == 429
    page = sign_in(client, "nobody", "wrong")
    assert page.status_code == 429
    assert "Too many attempts" in page.content.decode()
    assert 'class="auth-card"' in page.content.decode()
