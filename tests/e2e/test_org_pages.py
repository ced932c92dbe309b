"""The organisation pages in a real browser: an owner invites by e-mail, a new user signs up
through the invitation (the site's sign-up being off), joins, and the owner removes them.

The invitee confirms their address through the verification link mailed by allauth (read
from mail.outbox: the server runs in this process), as a real invitee would.
"""

import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail

from orgs.models import Membership
from panel.models import SiteSettings

pytestmark = pytest.mark.django_db(transaction=True)

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _mailed_link(to: str, pattern: str) -> str:
    bodies = [m.body for m in mail.outbox if m.to == [to]]
    links = [found for body in bodies for found in re.findall(pattern, body)]
    assert links, f"no link matching {pattern} mailed to {to}: {bodies}"
    return links[-1]


def _sign_in(page, login: str) -> None:
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "pw-for-tests")
    page.locator("form").filter(has=page.locator("input[name=password]")).locator(
        "button[type=submit]"
    ).click()


def _fits(page) -> None:
    widths = page.evaluate(
        "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )
    assert widths["scroll"] <= widths["inner"] + 1, widths


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_an_owner_invites_a_new_user_who_signs_up_joins_and_is_removed(
    asgi_server, acme, alice, browser, page, browser_errors, viewport, tmp_path
):
    base = asgi_server.url
    # One invitee per run: allauth will not mail the same address twice within minutes.
    name = f"dave{viewport['width']}"
    address = f"{name}@example.com"
    assert SiteSettings.load().allow_signup is False
    EmailAddress.objects.create(user=alice, email=alice.email, verified=True, primary=True)
    page.set_viewport_size(viewport)

    # The owner invites dave by e-mail.
    page.goto(f"{base}/accounts/login/?next=/accounts/orgs/acme/")
    _sign_in(page, "alice")
    page.wait_for_url(f"{base}/accounts/orgs/acme/")
    _fits(page)
    page.fill("#invite-email", address)
    page.select_option("#invite-role", "member")
    page.get_by_role("button", name="Invite").click()
    page.wait_for_selector(f"text=an invitation is on its way to {address}")
    assert address in page.locator("#invitations").inner_text()
    invitation_url = _mailed_link(address, r"https?://\S+/accounts/orgs/invitations/\S+/")
    assert invitation_url.startswith(base)

    # Dave, with no account, opens the link in his own browser and signs up.
    context = browser.new_context(viewport=viewport)
    invitee = context.new_page()
    try:
        invitee.goto(invitation_url)
        assert "Join Acme" in invitee.locator("h1").inner_text()
        _fits(invitee)
        invitee.locator("#invitation-signup").click()
        invitee.fill("input[name=email]", address)
        invitee.fill("input[name=username]", name)
        invitee.fill("input[name=password1]", "a-long-pass-phrase-42")
        invitee.fill("input[name=password2]", "a-long-pass-phrase-42")
        invitee.locator("form").filter(has=invitee.locator("input[name=password1]")).locator(
            "button[type=submit]"
        ).click()
        invitee.wait_for_url(f"{base}/accounts/confirm-email/")
        assert not Membership.objects.filter(user__username=name).exists()

        # He confirms his address from the mailed link, then signs in and comes back.
        invitee.goto(_mailed_link(address, r"https?://\S+/accounts/confirm-email/\S+/"))
        invitee.get_by_role("button", name="Confirm").click()
        invitee.wait_for_url(f"{base}/accounts/login/**")
        assert EmailAddress.objects.get(email=address).verified
        invitee.goto(invitation_url)
        invitee.locator("#invitation-signin").click()
        invitee.fill("input[name=login]", name)
        invitee.fill("input[name=password]", "a-long-pass-phrase-42")
        invitee.locator("form").filter(has=invitee.locator("input[name=password]")).locator(
            "button[type=submit]"
        ).click()
        invitee.wait_for_url(invitation_url)
        invitee.get_by_role("button", name="Accept").click()
        invitee.wait_for_url(f"{base}/accounts/orgs/acme/")
        assert invitee.locator("#my-role").inner_text() == "Member"
        _fits(invitee)
        invitee.screenshot(path=tmp_path / "invitee.png", full_page=True)
    finally:
        context.close()
    assert Membership.objects.get(user__username=name, organisation=acme).role == "member"

    # The owner sees him among the members and removes him.
    page.reload()
    row = page.locator(f"#members tr[data-user={name}]")
    assert "Member" in row.inner_text()
    row.get_by_role("link", name="Remove").click()
    page.get_by_role("button", name="Remove").click()
    page.wait_for_selector(f"text={name} was removed.")
    assert page.locator(f"#members tr[data-user={name}]").count() == 0
    _fits(page)
    assert not Membership.objects.filter(user__username=name).exists()
    assert browser_errors == []
