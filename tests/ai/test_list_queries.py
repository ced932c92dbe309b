"""The gateway's and the panel's lists answer in a fixed number of queries, however long.

Each counted request follows a change to the rows, so it starts with the per-process
cache dropped (as every process does on a change) and loads what it needs itself.
"""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.services import apikey_create
from ai.models import RollupPeriod, UsageRollup
from tests.factories import (
    AIModelFactory,
    ModelLinkFactory,
    OrganisationFactory,
    UpstreamFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

serial = itertools.count()


@pytest.fixture
def alice_key(alice):
    return apikey_create(user=alice, name="alice")[1]


@pytest.fixture
def add_models(alice, acme):
    """Adds two models alice may use, one through acme and one of her own, each with upstreams."""

    def add_rows():
        for owner in ({"organisation": acme}, {"user": alice}):
            model = AIModelFactory()
            UpstreamFactory(model=model)
            UpstreamFactory(model=model, priority=1)
            ModelLinkFactory(model=model, **owner)

    return add_rows


def lister(client, url, key, items=lambda body: body):
    def listed() -> int:
        response = client.get(url, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.content
        return len(items(response.json()))

    return listed


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1", "/api/ai/openai/v1"])
def test_it_lists_openai_models_in_a_fixed_number_of_queries(
    client, alice_key, add_models, assert_fixed_queries, prefix
):
    listed = lister(client, f"{prefix}/models", alice_key, items=lambda body: body["data"])
    assert_fixed_queries(9, listed, add_models)


def test_it_lists_panel_models_in_a_fixed_number_of_queries(
    client, alice_key, add_models, assert_fixed_queries
):
    assert_fixed_queries(9, lister(client, "/api/ai/models", alice_key), add_models)


def test_it_lists_my_models_in_a_fixed_number_of_queries(
    client, alice_key, add_models, assert_fixed_queries
):
    assert_fixed_queries(9, lister(client, "/api/ai/my-models", alice_key), add_models)


# Grouped by a row (not a time), one more query fetches the groups' names. Four of
# them load the caller's snapshot (cleared by each request's rows), as on every AI route.
@pytest.mark.parametrize(
    ("group_by", "queries"),
    [("model", 10), ("user", 10), ("org", 10), ("key", 10), ("day", 9), ("hour", 9)],
)
def test_it_reports_usage_in_a_fixed_number_of_queries(
    client, superuser, assert_fixed_queries, group_by, queries
):
    key, plain = apikey_create(user=superuser, name="root")
    start = datetime(2026, 11, 18, tzinfo=UTC)

    def add_rows():
        # Each row a new model, user, organisation and key, a day and an hour apart.
        n = next(serial)
        user, model, organisation = UserFactory(), AIModelFactory(), OrganisationFactory()
        other_key, _ = apikey_create(user=user, name=f"k{n}")
        for period, bucket in (
            (RollupPeriod.HOUR, start + timedelta(hours=n)),
            (RollupPeriod.DAY, start + timedelta(days=n)),
        ):
            UsageRollup.objects.create(
                period=period,
                bucket_start=bucket,
                model_id=model.pk,
                user_id=user.pk,
                organisation_id=organisation.pk,
                api_key_id=other_key.pk,
                requests=1,
                cost=Decimal("0.01"),
            )

    url = f"/api/ai/usage?from=2026-11-01&to=2026-12-31&group_by={group_by}"
    listed = lister(client, url, plain, items=lambda body: body["data"])
    assert_fixed_queries(queries, listed, add_rows)


def test_the_chat_page_lists_models_in_a_fixed_number_of_queries(
    client, alice, add_models, assert_fixed_queries
):
    client.force_login(alice)

    def listed() -> int:
        response = client.get("/chat/")
        assert response.status_code == 200
        return len(response.context["models"])

    assert_fixed_queries(8, listed, add_models)
