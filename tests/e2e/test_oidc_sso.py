"""SSO in a real browser: the sign-in page's provider button, the issuer, back on the chat page."""

import re

import pytest

from accounts.models import User
from tests.accounts.test_oidc_sso import DANA, issuer, provider  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_user_signs_in_with_the_identity_provider_and_lands_on_the_chat_page(
    asgi_server,
    provider,  # noqa: F811
    page,
    browser_errors,
):
    page.goto(f"{asgi_server.url}/accounts/login/")
    page.locator("a, button", has_text="Stub IdP").first.click()
    # A link (a GET) gets allauth's "Continue" page first, whose form POSTs; a button
    # that POSTs goes straight to the issuer.
    page.wait_for_url(re.compile(r"/accounts/oidc/idp/login/\?|/chat/$"))
    if "/accounts/oidc/idp/login/" in page.url:
        page.locator("form[method=post] [type=submit]").click()

    page.wait_for_url(f"{asgi_server.url}/chat/")
    assert User.objects.get().email == DANA["email"]
    assert browser_errors == []
