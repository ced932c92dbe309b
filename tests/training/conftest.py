"""Training's world: tina, a trainer in acme (beside alice, bob and charlie), and keys."""

import pytest

from accounts.models import Permission
from accounts.services import apikey_create
from orgs.models import Role
from tests.factories import MembershipFactory, UserFactory
from tests.training.helpers import trainer_group

MANAGE = [Permission.READ, Permission.PROXY, Permission.MANAGE]


@pytest.fixture
def tina(acme):
    """A member of acme with the trainer role."""
    user = UserFactory(username="tina")
    user.groups.add(trainer_group())
    MembershipFactory(user=user, organisation=acme, role=Role.MEMBER)
    return user


@pytest.fixture
def staff(db):
    return UserFactory(username="stella", is_staff=True)


@pytest.fixture
def training_keys(alice, bob, charlie, tina, staff):
    """A manage key for each persona, by persona name."""
    users = {"alice": alice, "bob": bob, "charlie": charlie, "tina": tina, "staff": staff}
    return {
        name: apikey_create(user=user, name=f"{name}-manage", permissions=MANAGE)[1]
        for name, user in users.items()
    }
