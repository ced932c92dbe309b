"""Every management route × persona × method, with the status each must get.

Personas: anonymous, charlie (outsider), bob (acme member), alice (acme owner),
mallory (model_manager group) and stella (staff), each with a `manage` key.
Outsiders never learn that an organisation, member or key exists: 404, not 403.
A refused write leaves the database as it was.
"""

import pytest

from accounts.models import APIKey
from ai.models import AIModel, ModelLink, Upstream
from orgs.models import Membership, Organisation
from tests.api.conftest import as_key

PERSONAS = ["anonymous", "charlie", "bob", "alice", "manager", "staff"]


def registry_only(ok: int) -> dict:
    """Models, upstreams and links: the admin and model_manager roles only."""
    return {"anonymous": 401, "charlie": 403, "bob": 403, "alice": 403, "manager": ok, "staff": ok}


def org_admins_read(ok: int, *, listed: bool) -> dict:
    """An acme link: the registry roles; acme's owner reads it; others see an empty list
    (listed) or a 404."""
    hidden = 200 if listed else 404
    return {
        "anonymous": 401,
        "charlie": hidden,
        "bob": hidden,
        "alice": ok,
        "manager": ok,
        "staff": ok,
    }


def members_see(ok: int, *, bob: int, alice: int | None = None) -> dict:
    """An acme resource: outsiders (the manager too) get 404; members by role."""
    return {
        "anonymous": 401,
        "charlie": 404,
        "bob": bob,
        "alice": ok if alice is None else alice,
        "manager": 404,
        "staff": ok,
    }


def everyone(ok: int) -> dict:
    return {"anonymous": 401, **{p: ok for p in PERSONAS[1:]}}


def own_key(ok: int) -> dict:
    """Bob's key: only bob and staff see it."""
    return {"anonymous": 401, "charlie": 404, "bob": ok, "alice": 404, "manager": 404, "staff": ok}


# (route, method, body, expected by persona); `{model}` and friends are filled per test.
ROUTES = [
    ("/api/v1/ai/models", "get", None, registry_only(200)),
    ("/api/v1/ai/models/deploy", "post", "deploy", registry_only(201)),
    ("/api/v1/ai/models/{model}", "get", None, registry_only(200)),
    ("/api/v1/ai/models/{model}", "patch", {"display_name": "Acme"}, registry_only(200)),
    ("/api/v1/ai/models/{model}", "delete", None, registry_only(204)),
    ("/api/v1/ai/models/{missing}", "get", None, registry_only(404)),
    ("/api/v1/ai/models/{model}/config", "get", None, registry_only(200)),
    ("/api/v1/ai/models/{model}/config", "put", {"context_window": 8192}, registry_only(200)),
    ("/api/v1/ai/upstreams", "get", None, registry_only(200)),
    ("/api/v1/ai/upstreams", "post", "upstream", registry_only(201)),
    ("/api/v1/ai/upstreams/{upstream}", "get", None, registry_only(200)),
    ("/api/v1/ai/upstreams/{upstream}", "patch", {"priority": 3}, registry_only(200)),
    ("/api/v1/ai/upstreams/{upstream}", "delete", None, registry_only(204)),
    ("/api/v1/ai/links", "get", None, org_admins_read(200, listed=True)),
    ("/api/v1/ai/links", "post", "link", registry_only(201)),
    ("/api/v1/ai/links/{link}", "get", None, org_admins_read(200, listed=False)),
    ("/api/v1/ai/links/{link}", "patch", {"requests_per_minute": 5}, registry_only(200)),
    ("/api/v1/ai/links/{link}", "delete", None, registry_only(204)),
    ("/api/v1/orgs", "get", None, everyone(200)),
    (
        "/api/v1/orgs",
        "post",
        {"name": "Globex", "slug": "globex"},
        {**everyone(403), "anonymous": 401, "staff": 201},
    ),
    ("/api/v1/orgs/acme", "get", None, members_see(200, bob=200)),
    ("/api/v1/orgs/acme", "patch", {"name": "Acme Ltd"}, members_see(200, bob=403)),
    ("/api/v1/orgs/acme", "delete", None, members_see(204, bob=403)),
    ("/api/v1/orgs/nowhere", "get", None, {**everyone(404), "anonymous": 401}),
    ("/api/v1/orgs/acme/members", "get", None, members_see(200, bob=200)),
    (
        "/api/v1/orgs/acme/members",
        "post",
        {"username": "dave", "role": "member"},
        members_see(201, bob=403),
    ),
    ("/api/v1/orgs/acme/members/{bob}", "get", None, members_see(200, bob=200)),
    ("/api/v1/orgs/acme/members/{bob}", "patch", {"role": "admin"}, members_see(200, bob=403)),
    ("/api/v1/orgs/acme/members/{bob}", "delete", None, members_see(204, bob=403)),
    ("/api/v1/auth/keys", "get", None, everyone(200)),
    ("/api/v1/auth/keys", "post", {"name": "script"}, everyone(201)),
    ("/api/v1/auth/keys/{key}", "get", None, own_key(200)),
    ("/api/v1/auth/keys/{key}", "delete", None, own_key(204)),
    ("/api/v1/auth/keys/{key}/permissions", "get", None, own_key(200)),
    ("/api/v1/auth/keys/{key}/permissions", "put", {"permissions": ["read"]}, own_key(200)),
    ("/api/v1/config", "get", None, {**everyone(403), "staff": 200}),
    ("/api/v1/version", "get", None, {p: 200 for p in PERSONAS}),
]

CASES = [
    pytest.param(route, method, body, persona, expected[persona], id=f"{method}-{route}-{persona}")
    for route, method, body, expected in ROUTES
    for persona in PERSONAS
]


def fingerprint() -> tuple:
    """What a refused write must leave untouched."""
    return (
        list(AIModel.objects.values_list("id", "display_name", "config")),
        list(Upstream.objects.values_list("id", "priority")),
        list(ModelLink.objects.values_list("id", "requests_per_minute")),
        list(Organisation.objects.values_list("id", "name")),
        list(Membership.objects.values_list("id", "role")),
        list(APIKey.objects.values_list("id", "is_revoked", "permissions")),
    )


def body_for(body, registry, bob):
    named = {
        "deploy": {
            "name": "new-model",
            "upstreams": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        },
        "upstream": {
            "model": registry.model.pk,
            "name": "backup",
            "base_url": "http://127.0.0.1:9/v1",
        },
        "link": {"model": registry.model.pk, "user": bob.pk, "requests_per_minute": 10},
    }
    return named.get(body, body) if isinstance(body, str) else body


@pytest.mark.parametrize(("route", "method", "body", "persona", "status"), CASES)
def test_it_answers_each_persona_as_the_matrix_says(
    api, keys, registry, bob, dave, route, method, body, persona, status
):
    url = route.format(
        model=registry.model.pk,
        missing=registry.model.pk + 1000,
        upstream=registry.upstream.pk,
        link=registry.link.pk,
        bob=bob.pk,
        key=registry.bob_key.pk,
    )
    before = fingerprint()
    client = as_key(api, keys.get(persona))
    response = getattr(client, method)(url, body_for(body, registry, bob), format="json")
    assert response.status_code == status, response.content
    if status >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert fingerprint() == before


def test_an_organisations_owner_lists_its_links_and_no_one_elses(api, keys, registry, alice, bob):
    from tests.factories import ModelLinkFactory, OrganisationFactory

    globex_link = ModelLinkFactory(model=registry.model, organisation=OrganisationFactory())
    bobs_own = ModelLinkFactory(model=registry.model, user=bob)

    def listed(persona):
        response = as_key(api, keys[persona]).get("/api/v1/ai/links")
        assert response.status_code == 200
        return {row["id"] for row in response.json()["results"]}

    assert listed("alice") == {registry.link.pk}
    assert listed("bob") == set() and listed("charlie") == set()
    assert listed("staff") == {registry.link.pk, globex_link.pk, bobs_own.pk}
    assert as_key(api, keys["alice"]).get(f"/api/v1/ai/links/{globex_link.pk}").status_code == 404
