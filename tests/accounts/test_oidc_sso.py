"""OpenID Connect sign-in against a real issuer on loopback (tests/oidc_issuer.py).

The test client starts the login at allauth's provider URL; the issuer's /authorize is
called over HTTP like a browser would, and its redirect is followed back to the callback,
where allauth calls the issuer's token, userinfo and JWKS endpoints itself (requests).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount, SocialApp
from auditlog.models import LogEntry
from django.contrib.sites.models import Site
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from accounts.models import User
from panel.models import SiteSettings
from tests.factories import UserFactory
from tests.oidc_issuer import MISBEHAVIOURS, StubIssuer

pytestmark = pytest.mark.django_db

CLIENT_SECRET = "oidc-client-secret-7d1f0c2a9b"
DANA = {"sub": "idp-dana-42", "email": "dana@example.com", "email_verified": True}
ERROR_PAGE = "socialaccount/authentication_error.html"


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    # allauth counts its mails and attempts in the cache: each test starts with none.
    cache.clear()


@pytest.fixture
def issuer():
    stub = StubIssuer(client_id="switchboard", secret=CLIENT_SECRET, user=dict(DANA)).start()
    yield stub
    stub.stop()


@pytest.fixture
def provider(settings, issuer):
    """The issuer configured as OIDC_PROVIDERS would configure it (settings)."""
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            **settings.SOCIALACCOUNT_PROVIDERS["openid_connect"],
            "APPS": [
                {
                    "provider_id": "idp",
                    "name": "Stub IdP",
                    "client_id": issuer.client_id,
                    "secret": CLIENT_SECRET,
                    "settings": {"server_url": issuer.url},
                }
            ],
        }
    }
    return "idp"


def sso_login(client, issuer, provider_id="idp"):
    """Runs the round trip; returns the callback's response."""
    started = client.post(f"/accounts/oidc/{provider_id}/login/")
    assert started.status_code == 302
    assert started["Location"].startswith(f"{issuer.url}/authorize?")
    approved = requests.get(started["Location"], allow_redirects=False, timeout=5)
    assert approved.status_code == 302
    back = urlsplit(approved.headers["Location"])
    assert back.path == f"/accounts/oidc/{provider_id}/login/callback/"
    return client.get(f"{back.path}?{back.query}")


def signed_in_user(client):
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


def assert_error_page(response):
    assert response.status_code < 500
    assert ERROR_PAGE in [template.name for template in response.templates]
    html = response.content.decode()
    assert "Traceback" not in html
    assert CLIENT_SECRET not in html


def test_it_signs_a_new_user_in_with_the_issuers_verified_email(client, issuer, provider):
    response = sso_login(client, issuer)

    assert response.status_code == 302
    assert response["Location"] == "/chat/"
    user = signed_in_user(client)
    assert user.email == DANA["email"]
    assert EmailAddress.objects.filter(user=user, email=DANA["email"], verified=True).exists()
    assert SocialAccount.objects.get(user=user).uid == DANA["sub"]
    assert client.get("/chat/").status_code == 200


def test_it_binds_the_code_to_the_sign_in_with_pkce(client, issuer, provider):
    started = client.post("/accounts/oidc/idp/login/")
    query = parse_qs(urlsplit(started["Location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    approved = requests.get(started["Location"], allow_redirects=False, timeout=5)
    back = urlsplit(approved.headers["Location"])

    # The issuer redeems the code only with the verifier of that challenge.
    response = client.get(f"{back.path}?{back.query}")

    assert response["Location"] == "/chat/"


def test_a_code_taken_to_another_browser_signs_nobody_in(client, issuer, provider):
    started = client.post("/accounts/oidc/idp/login/")
    approved = requests.get(started["Location"], allow_redirects=False, timeout=5)
    back = urlsplit(approved.headers["Location"])

    stranger = Client()
    response = stranger.get(f"{back.path}?{back.query}")

    assert_error_page(response)
    assert stranger.session.get("_auth_user_id") is None
    assert not User.objects.exists()


def test_it_asks_to_confirm_an_address_the_issuer_has_not_verified(
    client, issuer, provider, mailoutbox
):
    issuer.user["email_verified"] = False

    response = sso_login(client, issuer)

    assert signed_in_user(client) is None
    assert response["Location"] == reverse("account_email_verification_sent")
    assert EmailAddress.objects.get(email=DANA["email"]).verified is False
    assert [m.to for m in mailoutbox] == [[DANA["email"]]]


def test_it_signs_the_same_user_in_the_second_time(client, issuer, provider):
    sso_login(client, issuer)
    first = signed_in_user(client)
    client.logout()

    response = sso_login(client, issuer)

    assert response["Location"] == "/chat/"
    assert signed_in_user(client) == first
    assert User.objects.filter(email=DANA["email"]).count() == 1


def test_it_creates_the_user_even_with_sign_up_closed(client, issuer, provider):
    # Sign-up by form is closed (the default), so that closing is what SSO goes past.
    assert SiteSettings.load().allow_signup is False
    closed = client.get(reverse("account_signup"))
    assert "account/signup_closed.html" in [t.name for t in closed.templates]

    sso_login(client, issuer)

    assert signed_in_user(client).email == DANA["email"]


def test_it_does_not_take_over_a_local_account_with_the_same_email(
    client, issuer, provider, mailoutbox
):
    local = UserFactory(username="dana", email=DANA["email"])
    EmailAddress.objects.create(user=local, email=DANA["email"], verified=True, primary=True)

    response = sso_login(client, issuer)

    # allauth answers as for a new address (no enumeration) and tells the owner by mail.
    assert signed_in_user(client) is None
    assert response["Location"] == reverse("account_email_verification_sent")
    assert [(m.to, m.subject) for m in mailoutbox] == [
        ([DANA["email"]], "[Switchboard] Account Already Exists")
    ]
    assert not SocialAccount.objects.exists()
    assert User.objects.filter(email=DANA["email"]).count() == 1


@pytest.mark.parametrize("misbehaviour", sorted(MISBEHAVIOURS))
def test_it_refuses_a_misbehaving_issuer_with_allauths_error_page(
    client, issuer, provider, misbehaviour
):
    issuer.misbehaviour = misbehaviour

    response = sso_login(client, issuer)

    assert_error_page(response)
    assert signed_in_user(client) is None
    assert not User.objects.exists()


def test_it_shows_the_error_page_when_the_issuer_goes_away_before_the_callback(
    client, issuer, provider
):
    started = client.post("/accounts/oidc/idp/login/")
    approved = requests.get(started["Location"], allow_redirects=False, timeout=5)
    issuer.stop()
    back = urlsplit(approved.headers["Location"])

    response = client.get(f"{back.path}?{back.query}")

    assert_error_page(response)
    assert signed_in_user(client) is None
    assert not User.objects.exists()


def test_it_shows_the_error_page_when_the_issuer_is_unreachable(client, issuer, provider):
    issuer.stop()

    response = client.post("/accounts/oidc/idp/login/")

    assert_error_page(response)
    assert signed_in_user(client) is None


def test_the_sign_in_page_offers_the_provider(client, provider):
    html = client.get(reverse("login")).content.decode()

    assert 'href="/accounts/oidc/idp/login/' in html or 'action="/accounts/oidc/idp/login/' in html
    assert "Stub IdP" in html


# --- Providers from the admin -------------------------------------------------------------


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def _app_form(issuer, **extra):
    return {
        "provider": "openid_connect",
        "provider_id": "admin-idp",
        "name": "Admin IdP",
        "client_id": issuer.client_id,
        "secret": CLIENT_SECRET,
        "key": "",
        "settings": json.dumps({"server_url": issuer.url}),
        "sites": [Site.objects.get_current().pk],
        **extra,
    }


@pytest.fixture
def admin_app(admin_client, issuer):
    response = admin_client.post(reverse("admin:socialaccount_socialapp_add"), _app_form(issuer))
    assert response.status_code == 302
    return SocialApp.objects.get(provider_id="admin-idp")


def test_a_provider_added_in_the_admin_signs_users_in(client, issuer, admin_app):
    client.logout()
    assert admin_app.secret == CLIENT_SECRET

    response = sso_login(client, issuer, provider_id="admin-idp")

    assert response["Location"] == "/chat/"
    assert signed_in_user(client).email == DANA["email"]


def test_the_admin_never_renders_the_client_secret(admin_client, admin_app):
    pages = [
        reverse("admin:socialaccount_socialapp_changelist"),
        reverse("admin:socialaccount_socialapp_change", args=[admin_app.pk]),
        reverse("admin:socialaccount_socialapp_history", args=[admin_app.pk]),
        reverse("admin:auditlog_logentry_changelist"),
        *[reverse("admin:auditlog_logentry_change", args=[e.pk]) for e in LogEntry.objects.all()],
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert CLIENT_SECRET not in response.content.decode(), page


def test_it_keeps_the_stored_secret_when_the_field_is_left_empty(admin_client, issuer, admin_app):
    url = reverse("admin:socialaccount_socialapp_change", args=[admin_app.pk])
    response = admin_client.post(url, _app_form(issuer, secret="", name="Renamed IdP"))

    assert response.status_code == 302
    admin_app.refresh_from_db()
    assert (admin_app.name, admin_app.secret) == ("Renamed IdP", CLIENT_SECRET)


@pytest.mark.parametrize("taken_by", ["settings", "admin"])
def test_it_refuses_a_provider_id_already_in_use(admin_client, issuer, provider, taken_by):
    taken = provider
    if taken_by == "admin":
        taken = "admin-idp"
        admin_client.post(reverse("admin:socialaccount_socialapp_add"), _app_form(issuer))

    response = admin_client.post(
        reverse("admin:socialaccount_socialapp_add"), _app_form(issuer, provider_id=taken)
    )

    assert response.status_code == 200
    assert "provider_id" in response.context["adminform"].form.errors
    assert SocialApp.objects.filter(provider_id=taken).count() == (taken_by == "admin")


def test_it_audits_provider_changes_with_the_secret_masked(admin_client, issuer, admin_app):
    url = reverse("admin:socialaccount_socialapp_change", args=[admin_app.pk])
    admin_client.post(url, _app_form(issuer, secret="rotated-" + CLIENT_SECRET))

    entries = LogEntry.objects.get_for_object(admin_app).order_by("timestamp")
    assert [e.action for e in entries] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert entries[1].changes_dict["secret"] == ["********", "********"]
    assert CLIENT_SECRET not in json.dumps([e.changes for e in LogEntry.objects.all()])


# --- Configuration from the environment -----------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps(settings.SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"]))
"""


def _settings_with(tmp_path, oidc_providers: str):
    env = {key: value for key, value in os.environ.items() if key != "OIDC_PROVIDERS"}
    env.update(
        DJANGO_SETTINGS_MODULE="panel.settings",
        DATA_DIR=str(tmp_path),
        DEBUG="true",
        OIDC_PROVIDERS=oidc_providers,
        PYTHONPATH=str(ROOT),
    )
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # no .env from the checkout is read from here
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


PROVIDER = {
    "id": "corp",
    "name": "Corp SSO",
    "issuer": "https://sso.example.com/realms/corp",
    "client_id": "switchboard",
    "secret": CLIENT_SECRET,
}


def test_it_reads_providers_from_the_environment_in_allauths_form(tmp_path):
    result = _settings_with(tmp_path, json.dumps([PROVIDER]))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "provider_id": "corp",
            "name": "Corp SSO",
            "client_id": "switchboard",
            "secret": CLIENT_SECRET,
            "settings": {"server_url": "https://sso.example.com/realms/corp"},
        }
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (json.dumps([PROVIDER])[:-5], "OIDC_PROVIDERS is not valid JSON"),
        (json.dumps(PROVIDER), "OIDC_PROVIDERS must be a JSON list"),
        (json.dumps([{**PROVIDER, "issuer": ""}]), "OIDC_PROVIDERS[0] lacks issuer"),
        (
            json.dumps([{k: v for k, v in PROVIDER.items() if k != "client_id"}]),
            "OIDC_PROVIDERS[0] lacks client_id",
        ),
        (json.dumps([{**PROVIDER, "id": "a/b"}]), "OIDC_PROVIDERS[0]'s id goes in URLs"),
    ],
    ids=["bad-json", "not-a-list", "empty-issuer", "missing-client-id", "id-not-for-urls"],
)
def test_it_refuses_a_bad_provider_list_without_echoing_the_secret(tmp_path, value, message):
    result = _settings_with(tmp_path, value)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
    assert CLIENT_SECRET not in result.stderr
