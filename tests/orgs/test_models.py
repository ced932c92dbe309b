import pytest
from django.db import IntegrityError, transaction

from orgs.models import Role
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_it_rejects_a_second_membership_of_the_same_pair(alice, acme):
    with pytest.raises(IntegrityError), transaction.atomic():
        MembershipFactory(user=alice, organisation=acme, role=Role.ADMIN)


def test_it_lists_members_through_memberships(acme, alice, bob, charlie):
    assert set(acme.members.all()) == {alice, bob}


def test_it_treats_owners_and_admins_as_org_admins(acme, alice, bob):
    roles = {m.user.username: m.is_admin for m in acme.memberships.select_related("user")}
    assert roles == {"alice": True, "bob": False}
