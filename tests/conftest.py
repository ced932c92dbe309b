"""Shared fixtures: the personas alice (org owner), bob (member) and charlie (outsider)."""

import pytest

from orgs.models import Role
from tests.factories import MembershipFactory, OrganisationFactory, UserFactory


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def charlie(db):
    return UserFactory(username="charlie")


@pytest.fixture
def acme(alice, bob):
    """Alice's organisation; bob is a member, charlie is not."""
    org = OrganisationFactory(name="Acme", slug="acme")
    MembershipFactory(user=alice, organisation=org, role=Role.OWNER)
    MembershipFactory(user=bob, organisation=org, role=Role.MEMBER)
    return org


@pytest.fixture
def superuser(db):
    from accounts.models import User

    return User.objects.create_superuser("root", "root@example.com", "pw-for-tests")
