"""The account pages in Chromium, at desktop width and at a 390 px phone's: the bar reaches
every page, a new key is shown once, a key is revoked, the usage chart draws, and no page
scrolls sideways on the phone."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.conf import settings
from django.test import Client

from accounts.models import APIKey
from ai.models import RollupPeriod, UsageRollup
from orgs.services import wallet_for, wallet_topup
from tests.factories import AIModelFactory, ModelLinkFactory

pytestmark = pytest.mark.django_db(transaction=True)

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
BAR = (
    ("Account", "/accounts/"),
    ("API keys", "/accounts/keys/"),
    ("Usage", "/accounts/usage/"),
    ("Quota", "/accounts/quota/"),
    ("Wallet", "/accounts/wallet/"),
)


@pytest.fixture
def alices_things(alice):
    """A model linked to alice with a limit, a day of her usage and some credits."""
    model = AIModelFactory(name="e2e-chat")
    ModelLinkFactory(model=model, user=alice, tokens_per_day=1000)
    UsageRollup.objects.create(
        period=RollupPeriod.DAY,
        bucket_start=datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0),
        model_id=model.pk,
        user_id=alice.pk,
        requests=3,
        prompt_tokens=30,
        completion_tokens=15,
        cost=Decimal("0.75"),
    )
    wallet_topup(wallet=wallet_for(user=alice), amount=Decimal(10), reason="welcome")
    return model


def _log_in(page, base_url, user):
    # Signed in through a session made by Django's test client: the login page belongs to
    # the sign-in work (allauth's templates), not to these pages.
    client = Client()
    client.force_login(user)
    cookie = {"name": settings.SESSION_COOKIE_NAME, "url": base_url}
    page.context.add_cookies([cookie | {"value": client.cookies[cookie["name"]].value}])
    page.goto(f"{base_url}/chat/")
    page.wait_for_url(f"{base_url}/chat/")


def _fits(page, width: int) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, (page.url, scroll)


def _bar_link(page, name):
    return page.locator("header.account-bar nav").get_by_role("link", name=name, exact=True)


def _walk_and_use(page, base_url, width, user, shots):
    page.set_viewport_size({"width": width, "height": 844 if width < 500 else 900})
    _log_in(page, base_url, user)
    if width < 700:  # the chat page's sidebar slides in from its toggle on a phone
        page.locator("#toggle-sidebar").click()
    page.locator("#account-link").click()
    page.wait_for_url(f"{base_url}/accounts/")
    _fits(page, width)
    for name, path in BAR:
        _bar_link(page, name).click()
        page.wait_for_url(f"{base_url}{path}")
        assert _bar_link(page, name).get_attribute("aria-current") == "page"
        _fits(page, width)

    # The usage chart draws on a canvas of its own size, inside the page.
    _bar_link(page, "Usage").click()
    page.wait_for_function('document.body?.dataset.chartsReady === "yes"', timeout=10_000)
    box = page.locator("#chart-requests").bounding_box()
    assert box is not None and box["width"] > 0 and box["height"] > 0
    assert box["x"] + box["width"] <= width + 1
    assert "e2e-chat" in page.locator("#by-model").inner_text()
    page.screenshot(path=shots / "usage.png", full_page=True)

    # A new key is shown once; a reload shows no key and creates none.
    _bar_link(page, "API keys").click()
    page.fill("#id_name", "from the browser")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_url(f"{base_url}/accounts/keys/")
    plain = page.locator("#plain-key-value").inner_text()
    assert plain.startswith("sb-")
    _fits(page, width)
    page.reload()
    assert page.locator("#plain-key").count() == 0
    assert plain not in page.content()
    assert APIKey.objects.filter(name="from the browser").count() == 1

    # Revoked after a confirmation.
    row = page.locator("tr", has_text="from the browser")
    row.get_by_role("link", name="Revoke").click()
    _fits(page, width)
    page.get_by_role("button", name="Revoke key").click()
    page.wait_for_url(f"{base_url}/accounts/keys/")
    assert "revoked" in page.locator("tr", has_text="from the browser").inner_text()
    assert APIKey.objects.get(name="from the browser").is_revoked


def test_the_account_pages_work_at_desktop_width(
    asgi_server, alice, alices_things, page, browser_errors, tmp_path
):
    _walk_and_use(page, asgi_server.url, DESKTOP["width"], alice, tmp_path)
    assert browser_errors == []


def test_the_account_pages_work_on_a_phone(
    asgi_server, alice, alices_things, page, browser_errors, tmp_path
):
    _walk_and_use(page, asgi_server.url, PHONE["width"], alice, tmp_path)
    assert browser_errors == []
