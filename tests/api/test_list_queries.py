"""Every management list answers in a fixed number of queries, however many rows it lists."""

import itertools

from accounts.services import apikey_create
from orgs.models import Role
from tests.api.conftest import as_key
from tests.factories import (
    AIModelFactory,
    MembershipFactory,
    ModelLinkFactory,
    OrganisationFactory,
    UpstreamFactory,
    UserFactory,
)

serial = itertools.count()


def lister(client, url):
    """How many items the list at url shows (its first page holds them all here)."""

    def listed() -> int:
        response = client.get(url)
        assert response.status_code == 200, response.content
        return len(response.json()["results"])

    return listed


def test_it_lists_keys_in_a_fixed_number_of_queries(api, keys, alice, acme, assert_fixed_queries):
    models = [AIModelFactory(), AIModelFactory()]
    for model in models:
        ModelLinkFactory(model=model, organisation=acme)

    def add_rows():
        for _ in range(2):
            apikey_create(
                user=alice, name=f"k{next(serial)}", organisation=acme, allowed_models=models
            )

    listed = lister(as_key(api, keys["alice"]), "/api/v1/auth/keys")
    # The allowed models and the instances are prefetched: one query each.
    assert_fixed_queries(6, listed, add_rows)


def test_it_lists_organisations_in_a_fixed_number_of_queries(
    api, keys, alice, assert_fixed_queries
):
    def add_rows():
        for _ in range(2):
            organisation = OrganisationFactory()
            MembershipFactory(user=alice, organisation=organisation, role=Role.ADMIN)
            MembershipFactory(organisation=organisation)

    listed = lister(as_key(api, keys["alice"]), "/api/v1/orgs")
    assert_fixed_queries(4, listed, add_rows)


def test_it_lists_members_in_a_fixed_number_of_queries(api, keys, acme, assert_fixed_queries):
    def add_rows():
        for _ in range(2):
            MembershipFactory(organisation=acme, user=UserFactory())

    listed = lister(as_key(api, keys["alice"]), "/api/v1/orgs/acme/members")
    assert_fixed_queries(5, listed, add_rows)


def test_it_lists_models_in_a_fixed_number_of_queries(api, keys, assert_fixed_queries):
    def add_rows():
        for _ in range(2):
            model = AIModelFactory()
            UpstreamFactory(model=model)
            UpstreamFactory(model=model, is_enabled=False)

    listed = lister(as_key(api, keys["staff"]), "/api/v1/ai/models")
    assert_fixed_queries(5, listed, add_rows)


def test_it_lists_upstreams_in_a_fixed_number_of_queries(api, keys, assert_fixed_queries):
    def add_rows():
        for _ in range(2):
            UpstreamFactory(model=AIModelFactory())

    listed = lister(as_key(api, keys["staff"]), "/api/v1/ai/upstreams")
    assert_fixed_queries(4, listed, add_rows)


def test_it_lists_links_in_a_fixed_number_of_queries(api, keys, acme, assert_fixed_queries):
    def add_rows():
        ModelLinkFactory(model=AIModelFactory(), organisation=acme)
        ModelLinkFactory(model=AIModelFactory(), user=UserFactory())

    listed = lister(as_key(api, keys["staff"]), "/api/v1/ai/links")
    assert_fixed_queries(4, listed, add_rows)
