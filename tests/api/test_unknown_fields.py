"""A field a management route does not take is refused (400 naming it), never dropped; the
read-only fields of a resource may still be sent back as they were read."""

import pytest

from ai.models import AIModel, ModelLink, Upstream
from orgs.models import Membership, Organisation
from tests.api.conftest import as_key

BASE_URL = "http://127.0.0.1:9/v1"
UPSTREAMS = [{"name": "a", "base_url": BASE_URL}]
WRITES = [
    ("post", "/api/v1/ai/models/deploy", {"name": "new-model", "upstreams": UPSTREAMS}),
    ("patch", "/api/v1/ai/models/{model}", {"display_name": "Changed"}),
    ("put", "/api/v1/ai/models/{model}/config", {"max_output_tokens": 10}),
    ("post", "/api/v1/ai/upstreams", {"model": "{model}", "name": "b", "base_url": BASE_URL}),
    ("patch", "/api/v1/ai/upstreams/{upstream}", {"priority": 3}),
    ("post", "/api/v1/ai/links", {"model": "{model}", "user": "{charlie}"}),
    ("patch", "/api/v1/ai/links/{link}", {"is_enabled": False}),
    ("post", "/api/v1/orgs", {"name": "Initech", "slug": "initech"}),
    ("patch", "/api/v1/orgs/acme", {"name": "Changed"}),
    ("post", "/api/v1/orgs/acme/members", {"username": "charlie"}),
    ("patch", "/api/v1/orgs/acme/members/{bob}", {"role": "admin"}),
    ("post", "/api/v1/auth/keys", {"name": "new-key"}),
    ("put", "/api/v1/auth/keys/{key}/permissions", {"permissions": ["read"]}),
]


def _rows():
    tables = (AIModel, Upstream, ModelLink, Organisation, Membership)
    return [sorted(map(repr, model.objects.values())) for model in tables]


def _fill(value, ids):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids[value[1:-1]]
    return value


@pytest.fixture
def ids(registry, bob, charlie):
    return {
        "model": registry.model.pk,
        "upstream": registry.upstream.pk,
        "link": registry.link.pk,
        "key": registry.bob_key.pk,
        "bob": bob.pk,
        "charlie": charlie.pk,
    }


@pytest.mark.parametrize(("method", "url", "body"), WRITES, ids=[f"{m} {u}" for m, u, _ in WRITES])
def test_every_write_route_refuses_an_unknown_field(api, keys, ids, method, url, body):
    client = as_key(api, keys["staff"])
    url = url.format(**ids)
    body = {name: _fill(value, ids) for name, value in body.items()}
    before = _rows()

    response = getattr(client, method)(url, {**body, "colour": "blue"}, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["message"]) == ("colour", "Unknown field.")
    assert _rows() == before
    # Without it, the same request is taken: the field alone was refused.
    assert getattr(client, method)(url, body, format="json").status_code in (200, 201)


def test_it_names_an_unknown_field_of_a_nested_object(api, keys):
    body = {
        "name": "new-model",
        "upstreams": [{"name": "a", "base_url": BASE_URL, "wieght": 2}],
    }
    response = as_key(api, keys["staff"]).post("/api/v1/ai/models/deploy", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "upstreams.0.wieght"
    assert not AIModel.objects.filter(name="new-model").exists()


def test_a_resource_sent_back_as_it_was_read_is_taken(api, keys, registry):
    client = as_key(api, keys["staff"])
    url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    upstream = client.get(url).json()
    upstream["priority"] = 7
    response = client.put(url, upstream, format="json")
    assert response.status_code == 200, response.content
    assert Upstream.objects.get(pk=registry.upstream.pk).priority == 7
