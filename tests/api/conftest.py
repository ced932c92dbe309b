"""The management API's world: acme with a model, and a manage key for every persona."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from accounts.models import APIKey, Permission
from accounts.roles import MODEL_MANAGER
from accounts.services import apikey_create
from ai.models import AIModel, ModelLink, Upstream
from orgs.models import Role
from tests.factories import (
    AIModelFactory,
    MembershipFactory,
    ModelLinkFactory,
    OrganisationFactory,
    UpstreamFactory,
    UserFactory,
)

MANAGE = [Permission.READ, Permission.PROXY, Permission.MANAGE]
UPSTREAM_SECRET = "sk-upstream-secret-never-returned"


@pytest.fixture
def manager(db):
    """Mallory, a model manager: no organisation, no staff flag."""
    user = UserFactory(username="mallory")
    user.groups.add(Group.objects.get(name=MODEL_MANAGER))
    return user


@pytest.fixture
def staff(db):
    return UserFactory(username="stella", is_staff=True)


@pytest.fixture
def dave(alice):
    """Someone alice may add to acme: a member of Acme Labs, her other organisation."""
    user = UserFactory(username="dave")
    labs = OrganisationFactory(name="Acme Labs", slug="acme-labs")
    MembershipFactory(user=alice, organisation=labs, role=Role.OWNER)
    MembershipFactory(user=user, organisation=labs)
    return user


@dataclass
class Registry:
    model: AIModel
    upstream: Upstream
    link: ModelLink
    bob_key: APIKey


@pytest.fixture
def registry(acme, bob):
    model = AIModelFactory(name="acme-chat")
    upstream = UpstreamFactory(model=model, name="primary", api_key=UPSTREAM_SECRET)
    link = ModelLinkFactory(model=model, organisation=acme, is_default=True)
    bob_key, _ = apikey_create(user=bob, name="bob-proxy", organisation=acme)
    return Registry(model=model, upstream=upstream, link=link, bob_key=bob_key)


@pytest.fixture
def keys(alice, bob, charlie, manager, staff):
    """A manage key for each persona, by persona name."""
    users = {"alice": alice, "bob": bob, "charlie": charlie, "manager": manager, "staff": staff}
    return {
        name: apikey_create(user=user, name=f"{name}-manage", permissions=MANAGE)[1]
        for name, user in users.items()
    }


@pytest.fixture
def api():
    return APIClient()


def as_key(client: APIClient, key: str | None) -> APIClient:
    client.credentials(**({"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}))
    return client
