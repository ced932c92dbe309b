"""Invitation services: a hashed token, the e-mailed link, role rules, accept and revoke."""

import hashlib
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from orgs.models import Invitation, Membership, Role
from orgs.services import invitation_accept, invitation_create, invitation_revoke
from panel.errors import NotFound, PermissionDenied
from tests.factories import MembershipFactory, UserFactory


def absolute(path: str) -> str:
    return f"http://testserver{path}"


def invite(organisation, by, email="dave@example.com", role=Role.MEMBER):
    return invitation_create(
        organisation=organisation, email=email, role=role, by=by, absolute_uri=absolute
    )


def test_it_stores_only_the_hash_of_the_token_and_mails_the_absolute_link(acme, alice, settings):
    invitation, token = invite(acme, alice)

    invitation.refresh_from_db()
    assert invitation.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(Invitation.objects.filter(pk=invitation.pk).values().get())
    assert invitation.invited_by == alice
    ttl = invitation.expires_at - timezone.now()
    assert timedelta(days=settings.INVITATION_TTL_DAYS) - timedelta(minutes=1) < ttl
    assert ttl <= timedelta(days=settings.INVITATION_TTL_DAYS)
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["dave@example.com"]
    assert f"http://testserver/accounts/orgs/invitations/{token}/" in mail.outbox[0].body
    assert "Acme" in mail.outbox[0].subject


def test_it_lets_the_invitee_join_with_the_invited_role_once(acme, alice):
    invitation, token = invite(acme, alice, role=Role.ADMIN)
    dave = UserFactory(username="dave")

    membership = invitation_accept(token=token, user=dave)

    assert (membership.user, membership.organisation, membership.role) == (dave, acme, Role.ADMIN)
    invitation.refresh_from_db()
    assert invitation.accepted_by == dave and invitation.accepted_at is not None
    with pytest.raises(NotFound):
        invitation_accept(token=token, user=UserFactory(username="erin"))
    assert not Membership.objects.filter(user__username="erin").exists()


def test_it_keeps_an_existing_members_role_when_they_accept(acme, alice, bob):
    _, token = invite(acme, alice, email=bob.email, role=Role.OWNER)

    membership = invitation_accept(token=token, user=bob)

    assert membership.role == Role.MEMBER
    assert Membership.objects.filter(user=bob, organisation=acme).count() == 1


def test_it_refuses_an_expired_a_revoked_and_an_unknown_token(acme, alice):
    dave = UserFactory(username="dave")
    expired, expired_token = invite(acme, alice)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    revoked, revoked_token = invite(acme, alice)
    invitation_revoke(invitation=revoked, by=alice)

    for token in (expired_token, revoked_token, "not-a-token", ""):
        with pytest.raises(NotFound, match="invalid or has expired"):
            invitation_accept(token=token, user=dave)
    assert not dave.memberships.exists()


def test_a_plain_member_cannot_invite_or_revoke(acme, alice, bob):
    with pytest.raises(PermissionDenied):
        invite(acme, bob)
    invitation, _ = invite(acme, alice)
    with pytest.raises(PermissionDenied):
        invitation_revoke(invitation=invitation, by=bob)
    invitation.refresh_from_db()
    assert invitation.revoked_at is None
    assert Invitation.objects.count() == 1 and len(mail.outbox) == 1


def test_an_admin_cannot_invite_or_revoke_an_owner(acme, alice):
    admin = MembershipFactory(organisation=acme, role=Role.ADMIN).user
    with pytest.raises(PermissionDenied):
        invite(acme, admin, role=Role.OWNER)
    invitation, _ = invite(acme, alice, role=Role.OWNER)
    with pytest.raises(PermissionDenied):
        invitation_revoke(invitation=invitation, by=admin)

    _, token = invite(acme, admin, role=Role.ADMIN)
    assert invitation_accept(token=token, user=UserFactory()).role == Role.ADMIN


def test_an_outsider_cannot_invite(acme, charlie):
    with pytest.raises(PermissionDenied):
        invite(acme, charlie)
    assert not Invitation.objects.exists() and mail.outbox == []


def test_a_line_break_in_the_organisations_name_stays_out_of_the_subject(acme, alice):
    acme.name = "Acme\r\nBcc: victim@example.com"
    acme.save()
    invite(acme, alice)
    assert mail.outbox[0].subject.endswith("Join Acme Bcc: victim@example.com")
    assert mail.outbox[0].to == ["dave@example.com"] and not mail.outbox[0].bcc
