"""The sign-in card and the two-factor challenge in a real browser at phone width."""

import re

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

from tests.accounts.allauth_helpers import PASSWORD, fresh_totp

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def alice_with_totp(alice, empty_cache):
    """alice with an authenticator app, set up through allauth's own activation."""
    secret = generate_totp_secret()
    TOTP.activate(alice, secret)
    return secret


def _fits(page) -> None:
    widths = page.evaluate(
        "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )
    assert widths["scroll"] <= widths["inner"] + 1, widths
    card = page.locator("main.auth-card").bounding_box()
    assert card["x"] >= 0 and card["x"] + card["width"] <= PHONE["width"] + 1, card


def test_sign_in_and_the_totp_challenge_render_on_a_phone(
    asgi_server, alice_with_totp, page, browser_errors, tmp_path
):
    page.set_viewport_size(PHONE)
    page.goto(f"{asgi_server.url}/chat/")
    page.wait_for_url("**/accounts/login/**")
    _fits(page)
    assert page.get_by_label("Username or e-mail").is_visible()
    assert page.get_by_role("link", name="Forgot password?").is_visible()
    assert page.get_by_role("link", name="Sign up").count() == 0
    page.screenshot(path=tmp_path / "sign-in.png", full_page=True)

    page.fill("#id_login", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/accounts/2fa/authenticate/")
    _fits(page)
    code = page.locator("input[name=code]")
    assert code.is_visible()
    box = code.bounding_box()
    assert box["x"] + box["width"] <= PHONE["width"], box
    page.screenshot(path=tmp_path / "challenge.png", full_page=True)

    right = fresh_totp(alice_with_totp)
    wrong = next(c for c in ("000000", "111111", "222222") if c != right)
    code.fill(wrong)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_selector("text=Incorrect code.")
    assert re.search(r"/accounts/2fa/authenticate/$", page.url)

    page.locator("input[name=code]").fill(fresh_totp(alice_with_totp))
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{asgi_server.url}/chat/")
    assert browser_errors == []
