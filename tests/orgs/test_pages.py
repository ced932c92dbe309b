"""The organisation pages and the invitation page, through the test client."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from accounts.adapters import INVITATION_SESSION_KEY
from accounts.services import apikey_create
from ai.models import RollupPeriod, UsageRollup
from orgs.models import Invitation, Membership, Role
from orgs.services import invitation_create, invitation_revoke, wallet_for, wallet_topup
from panel.models import SiteSettings
from tests.factories import AIModelFactory, MembershipFactory, ModelLinkFactory, UserFactory

DETAIL = "/accounts/orgs/acme/"


def client_for(client, user):
    client.force_login(user)
    return client


def invitation_link(token: str) -> str:
    return f"/accounts/orgs/invitations/{token}/"


def make_invitation(acme, alice, email="dave@example.com", role=Role.MEMBER):
    return invitation_create(
        organisation=acme,
        email=email,
        role=role,
        by=alice,
        absolute_uri=lambda path: f"http://testserver{path}",
    )


@pytest.fixture
def admin_user(acme):
    return MembershipFactory(organisation=acme, role=Role.ADMIN, user__username="ada").user


def admin_routes(acme, alice, bob):
    invitation, _ = make_invitation(acme, alice)
    key, _ = apikey_create(user=alice, name="ci", organisation=acme)
    bob_membership = Membership.objects.get(user=bob, organisation=acme)
    return [
        ("post", f"{DETAIL}invitations/new/", {"email": "x@example.com", "role": "member"}),
        ("post", f"{DETAIL}invitations/{invitation.pk}/revoke/", {}),
        ("post", f"{DETAIL}members/{bob_membership.pk}/role/", {"role": "admin"}),
        ("get", f"{DETAIL}members/{bob_membership.pk}/remove/", {}),
        ("post", f"{DETAIL}members/{bob_membership.pk}/remove/", {}),
        ("post", f"{DETAIL}keys/{key.pk}/revoke/", {}),
    ]


def test_the_list_shows_my_organisations_with_my_role(client, acme, bob):
    response = client_for(client, bob).get("/accounts/orgs/")
    assert response.status_code == 200
    assert b"Acme" in response.content and b"Member" in response.content


def test_an_outsider_gets_404_everywhere(client, acme, alice, bob, charlie):
    routes = [("get", DETAIL, {}), *admin_routes(acme, alice, bob)]
    client_for(client, charlie)
    for method, url, data in routes:
        assert getattr(client, method)(url, data).status_code == 404, url
    assert b"Acme" not in client.get("/accounts/orgs/").content
    assert Membership.objects.get(user=bob).role == Role.MEMBER
    assert Invitation.objects.count() == 1 and len(mail.outbox) == 1


def test_a_member_sees_only_the_name_and_their_role_and_404_for_the_rest(client, acme, alice, bob):
    routes = admin_routes(acme, alice, bob)
    client_for(client, bob)
    response = client.get(DETAIL)
    assert response.status_code == 200
    assert b"Acme" in response.content and b"Member" in response.content
    assert b"alice" not in response.content and b"Invite" not in response.content
    for method, url, data in routes:
        assert getattr(client, method)(url, data).status_code == 404, url
    assert Membership.objects.filter(organisation=acme).count() == 2
    assert Invitation.objects.filter(revoked_at__isnull=True).count() == 1


def test_signed_out_visitors_are_sent_to_sign_in(client, acme):
    response = client.get(DETAIL)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_owner_sees_members_invitations_links_keys_usage_and_wallet(client, acme, alice, bob):
    model = AIModelFactory(name="acme-chat")
    ModelLinkFactory(model=model, organisation=acme, user=None, requests_per_minute=42)
    apikey_create(user=bob, name="bob-ci", organisation=acme)
    make_invitation(acme, alice, email="pending@example.com")
    UsageRollup.objects.create(
        period=RollupPeriod.DAY,
        bucket_start=timezone.now().replace(hour=0, minute=0, second=0, microsecond=0),
        model_id=model.pk,
        organisation_id=acme.pk,
        requests=7,
        cost=Decimal("1.5"),
    )
    wallet_topup(
        wallet=wallet_for(organisation=acme), amount=Decimal("12"), reason="seed", by=alice
    )

    response = client_for(client, alice).get(DETAIL)

    assert response.status_code == 200
    page = response.content.decode()
    for text in ("bob", "pending@example.com", "acme-chat", "42", "bob-ci", "seed", "12.000000"):
        assert text in page, text
    usage = response.context["usage"]
    assert [(row["model"], row["requests"]) for row in usage] == [("acme-chat", 7)]


def test_inviting_answers_the_same_for_a_member_a_user_and_an_unknown_address(
    client, acme, alice, bob, charlie
):
    client_for(client, alice)
    answers = []
    for email in (bob.email, charlie.email, "nobody@example.com"):
        response = client.post(
            f"{DETAIL}invitations/new/", {"email": email, "role": "member"}, follow=True
        )
        assert response.status_code == 200
        page = response.content.decode().replace(email, "EMAIL")
        answers.append(re.search(r'<ul class="messages">.*?</ul>', page, re.S).group(0))
    assert answers[0] == answers[1] == answers[2]
    assert "an invitation is on its way to EMAIL" in answers[0]
    assert Invitation.objects.count() == 3
    assert sorted(m.to[0] for m in mail.outbox) == sorted(
        [bob.email, charlie.email, "nobody@example.com"]
    )
    token_link = mail.outbox[-1].body.split("http://testserver", 1)[1].split()[0]
    assert token_link.startswith("/accounts/orgs/invitations/")


def test_an_admin_cannot_invite_an_owner(client, acme, admin_user):
    response = client_for(client, admin_user).post(
        f"{DETAIL}invitations/new/", {"email": "x@example.com", "role": "owner"}, follow=True
    )
    assert response.status_code == 200
    assert b"Only an owner" in response.content
    assert not Invitation.objects.exists() and mail.outbox == []


@pytest.mark.parametrize(
    "data",
    [
        {"email": "a" * 10_000 + "@example.com", "role": "member"},
        {"email": "dave\x00@example.com", "role": "member"},
        {"email": "not-an-address", "role": "member"},
        {"email": "dave@example.com", "role": "emperor"},
        {"email": "dave@example.com", "role": "member\x00"},
        {"email": "", "role": "3"},
        {},
    ],
)
def test_bad_invitation_input_is_a_form_error_never_a_500(client, acme, alice, data):
    response = client_for(client, alice).post(f"{DETAIL}invitations/new/", data)
    assert response.status_code == 400
    assert b'class="error"' in response.content
    assert not Invitation.objects.exists() and mail.outbox == []


@pytest.mark.parametrize("role", ["emperor", "owner\x00", "x" * 10_000, ""])
def test_a_bad_role_change_is_refused_without_a_500(client, acme, alice, bob, role):
    membership = Membership.objects.get(user=bob)
    response = client_for(client, alice).post(
        f"{DETAIL}members/{membership.pk}/role/", {"role": role}, follow=True
    )
    assert response.status_code == 200 and b"Choose one of the roles" in response.content
    membership.refresh_from_db()
    assert membership.role == Role.MEMBER


def test_the_owner_changes_a_role_and_removes_a_member_after_confirming(client, acme, alice, bob):
    membership = Membership.objects.get(user=bob)
    client_for(client, alice)
    client.post(f"{DETAIL}members/{membership.pk}/role/", {"role": "admin"})
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN

    confirm = client.get(f"{DETAIL}members/{membership.pk}/remove/")
    assert confirm.status_code == 200 and b"Remove bob from Acme?" in confirm.content
    assert Membership.objects.filter(pk=membership.pk).exists()
    response = client.post(f"{DETAIL}members/{membership.pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert client.post(f"{DETAIL}members/{membership.pk}/remove/").status_code == 404


def test_an_admin_cannot_remove_the_owner_nor_make_someone_owner(
    client, acme, alice, bob, admin_user
):
    owner = Membership.objects.get(user=alice)
    member = Membership.objects.get(user=bob)
    client_for(client, admin_user)
    response = client.post(f"{DETAIL}members/{owner.pk}/remove/", follow=True)
    assert b"Only an owner" in response.content
    client.post(f"{DETAIL}members/{member.pk}/role/", {"role": "owner"})
    assert Membership.objects.get(pk=owner.pk).role == Role.OWNER
    assert Membership.objects.get(pk=member.pk).role == Role.MEMBER


def test_an_admin_removed_while_on_the_page_gets_404_on_the_next_action(
    client, acme, alice, admin_user
):
    client_for(client, admin_user)
    assert client.get(DETAIL).status_code == 200
    Membership.objects.filter(user=admin_user).delete()

    response = client.post(
        f"{DETAIL}invitations/new/", {"email": "x@example.com", "role": "member"}
    )
    assert response.status_code == 404
    assert client.get(DETAIL).status_code == 404
    assert not Invitation.objects.exists()


def test_the_admin_revokes_an_invitation_and_a_key(client, acme, alice, admin_user):
    invitation, token = make_invitation(acme, alice)
    key, _ = apikey_create(user=alice, name="ci", organisation=acme)
    client_for(client, admin_user)
    client.post(f"{DETAIL}invitations/{invitation.pk}/revoke/")
    client.post(f"{DETAIL}keys/{key.pk}/revoke/")
    invitation.refresh_from_db()
    key.refresh_from_db()
    assert invitation.revoked_at is not None and key.is_revoked
    assert client.get(invitation_link(token)).status_code == 404


def test_another_organisations_key_and_invitation_are_404(client, acme, alice, charlie):
    other = MembershipFactory(user=charlie, role=Role.OWNER).organisation
    invitation, _ = make_invitation(other, charlie)
    key, _ = apikey_create(user=charlie, name="theirs", organisation=other)
    client_for(client, alice)
    assert client.post(f"{DETAIL}invitations/{invitation.pk}/revoke/").status_code == 404
    assert client.post(f"{DETAIL}keys/{key.pk}/revoke/").status_code == 404
    invitation.refresh_from_db()
    key.refresh_from_db()
    assert invitation.revoked_at is None and not key.is_revoked


# --- The invitation page ------------------------------------------------------------------


def test_every_kind_of_bad_token_gets_the_same_invalid_page(client, acme, alice, bob):
    expired, expired_token = make_invitation(acme, alice)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(1))
    revoked, revoked_token = make_invitation(acme, alice)
    invitation_revoke(invitation=revoked, by=alice)
    _, used_token = make_invitation(acme, alice)
    client_for(client, bob).post(invitation_link(used_token))
    client.logout()

    pages = set()
    for token in (expired_token, revoked_token, used_token, "unknown", "x" * 5000, "%00"):
        response = client.get(invitation_link(token))
        assert response.status_code == 404, token
        assert b"invalid or has expired" in response.content
        assert INVITATION_SESSION_KEY not in client.session
        pages.add(response.content)
    assert len(pages) == 1


def test_a_signed_in_user_accepts_and_lands_on_the_organisation(client, acme, alice, charlie):
    _, token = make_invitation(acme, alice, role=Role.ADMIN)
    client_for(client, charlie)
    page = client.get(invitation_link(token))
    assert page.status_code == 200 and b"Acme" in page.content and b"admin" in page.content
    assert not Membership.objects.filter(user=charlie).exists()

    response = client.post(invitation_link(token))

    assert response.status_code == 302 and response["Location"] == DETAIL
    assert Membership.objects.get(user=charlie, organisation=acme).role == Role.ADMIN
    assert client.post(invitation_link(token)).status_code == 404


def test_a_visitor_keeps_the_token_and_may_sign_up_though_sign_up_is_off(client, acme, alice):
    assert SiteSettings.load().allow_signup is False
    _, token = make_invitation(acme, alice)
    assert b'name="password1"' not in client.get("/accounts/signup/").content

    page = client.get(invitation_link(token))

    assert page.status_code == 200
    assert client.session[INVITATION_SESSION_KEY] == token
    next_query = f"next=%2Faccounts%2Forgs%2Finvitations%2F{token}%2F"
    assert f'/accounts/login/?{next_query}"'.encode() in page.content
    assert f'/accounts/signup/?{next_query}"'.encode() in page.content
    signup = client.get("/accounts/signup/")
    assert signup.status_code == 200 and b'name="password1"' in signup.content


def test_accepting_clears_the_token_from_the_session(client, acme, alice):
    _, token = make_invitation(acme, alice)
    dave = UserFactory(username="dave")
    client.get(invitation_link(token))
    assert client.session[INVITATION_SESSION_KEY] == token
    client.force_login(dave)
    client.post(invitation_link(token))
    assert INVITATION_SESSION_KEY not in client.session
    assert Membership.objects.filter(user=dave, organisation=acme).exists()


def test_the_invitation_admin_never_shows_the_token_hash_and_revokes(
    client, acme, alice, superuser
):
    invitation, _ = make_invitation(acme, alice)
    client.force_login(superuser)
    listing = client.get("/admin/orgs/invitation/")
    detail = client.get(f"/admin/orgs/invitation/{invitation.pk}/change/")
    assert listing.status_code == 200 and detail.status_code == 200
    for response in (listing, detail):
        assert invitation.token_hash.encode() not in response.content
    assert b"open" in listing.content
    client.post(
        "/admin/orgs/invitation/",
        {"action": "revoke", "_selected_action": [invitation.pk]},
    )
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None


def test_the_audit_log_records_an_invitation_without_its_token_hash(acme, alice):
    from auditlog.models import LogEntry

    invitation, _ = make_invitation(acme, alice)
    entry = LogEntry.objects.get_for_object(invitation).get()
    assert "email" in entry.changes_dict
    assert "token_hash" not in entry.changes_dict


def test_a_token_kept_in_the_session_is_dropped_once_it_is_revoked(client, acme, alice):
    invitation, token = make_invitation(acme, alice)
    client.get(invitation_link(token))
    assert client.session[INVITATION_SESSION_KEY] == token
    invitation_revoke(invitation=invitation, by=alice)

    assert client.get(invitation_link(token)).status_code == 404
    assert INVITATION_SESSION_KEY not in client.session
    assert b'name="password1"' not in client.get("/accounts/signup/").content


def test_the_organisation_page_costs_the_same_queries_with_more_rows(
    client, acme, alice, assert_fixed_queries
):
    client_for(client, alice)
    wallet = wallet_for(organisation=acme)

    def add_rows():
        user = MembershipFactory(organisation=acme).user
        apikey_create(user=user, name="k", organisation=acme)
        ModelLinkFactory(organisation=acme, user=None)
        make_invitation(acme, alice, email=f"{user.username}@example.org")
        wallet_topup(wallet=wallet, amount=Decimal("1"), reason="r", by=alice)

    def listed():
        response = client.get(DETAIL)
        assert response.status_code == 200
        return len(response.context["members"])

    assert_fixed_queries(13, listed, add_rows)


def test_a_kept_token_revoked_later_no_longer_opens_sign_up(client, acme, alice):
    invitation, token = make_invitation(acme, alice)
    client.get(invitation_link(token))
    invitation_revoke(invitation=invitation, by=alice)

    # Straight to the sign-up page, never back through the invitation page.
    assert client.session[INVITATION_SESSION_KEY] == token
    assert b'name="password1"' not in client.get("/accounts/signup/").content


def test_an_organisation_named_like_the_invitation_route_keeps_its_invite_form(client, alice):
    from orgs.services import organisation_create

    organisation = organisation_create(name="Invitations", slug="invitations", owner=alice)
    response = client_for(client, alice).post(
        "/accounts/orgs/invitations/invitations/new/",
        {"email": "x@example.com", "role": "member"},
    )
    assert response.status_code == 302
    assert Invitation.objects.filter(organisation=organisation, email="x@example.com").exists()
