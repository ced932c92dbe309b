"""Bad input on the management API: a 4xx in the envelope naming the field, never a 500."""

import pytest

from ai.models import Upstream
from tests.api.conftest import as_key

HUGE = 10**20  # past any database integer: SQLite cannot even bind it


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_it_answers_a_member_id_past_any_row_id_with_a_404(api, keys, acme, method):
    url = f"/api/v1/orgs/acme/members/{HUGE}"
    response = getattr(as_key(api, keys["alice"]), method)(url, {"role": "admin"}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert acme.memberships.count() == 2


def test_it_answers_a_key_owner_filter_past_any_row_id_with_a_400(api, keys):
    response = as_key(api, keys["staff"]).get(f"/api/v1/auth/keys?user={HUGE}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "user"


def test_it_refuses_a_new_key_scoped_to_a_model_id_past_any_row_id(api, keys):
    body = {"name": "scoped", "allowed_models": [HUGE]}
    response = as_key(api, keys["alice"]).post("/api/v1/auth/keys", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "allowed_models.0"


def test_it_refuses_to_narrow_a_key_to_a_model_id_past_any_row_id(api, keys, registry):
    url = f"/api/v1/auth/keys/{registry.bob_key.pk}/permissions"
    body = {"permissions": ["proxy"], "allowed_models": [HUGE]}
    response = as_key(api, keys["bob"]).put(url, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "allowed_models.0"
    registry.bob_key.refresh_from_db()
    assert not registry.bob_key.allowed_models.exists()


@pytest.mark.parametrize(
    "name",
    ["bad\x01name", "line\nbreak", "carriage\rreturn", "tab\tbed", "del\x7f", "c1\x85c"],
    ids=["soh", "lf", "cr", "tab", "del", "c1"],
)
def test_it_refuses_an_upstream_name_that_cannot_be_a_header_value(api, keys, registry, name):
    client = as_key(api, keys["staff"])
    body = {"model": registry.model.pk, "name": name, "base_url": "http://127.0.0.1:9/v1"}
    response = client.post("/api/v1/ai/upstreams", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "name"
    url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    response = client.patch(url, {"name": name}, format="json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "name")
    deploy = {
        "name": "new-model",
        "upstreams": [{"name": name, "base_url": "http://127.0.0.1:9/v1"}],
    }
    response = client.post("/api/v1/ai/models/deploy", deploy, format="json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "upstreams.0.name")
    assert list(Upstream.objects.values_list("name", flat=True)) == ["primary"]


def test_it_still_accepts_an_upstream_name_in_any_script(api, keys, registry):
    body = {
        "model": registry.model.pk,
        "name": "Zürich – 東京",
        "base_url": "http://127.0.0.1:9/v1",
    }
    response = as_key(api, keys["staff"]).post("/api/v1/ai/upstreams", body, format="json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/api/v1/ai/models/deploy"),
        ("put", "/api/v1/ai/models/{model}/config"),
        ("patch", "/api/v1/ai/models/{model}"),
        ("post", "/api/v1/ai/upstreams"),
        ("post", "/api/v1/ai/links"),
        ("post", "/api/v1/orgs"),
        ("post", "/api/v1/orgs/acme/members"),
        ("post", "/api/v1/auth/keys"),
        ("put", "/api/v1/auth/keys/{key}/permissions"),
    ],
)
def test_it_refuses_json_nested_a_thousand_levels_deep_on_every_write(
    api, keys, registry, method, url
):
    url = url.format(model=registry.model.pk, key=registry.bob_key.pk)
    client = as_key(api, keys["staff"])
    for depth in (65, 1_000, 100_000):
        body = '{"name": ' + "[" * depth + "]" * depth + "}"
        response = getattr(client, method)(url, body, content_type="application/json")
        assert response.status_code == 400, response.content
        assert response.json()["error"]["type"] == "invalid_request_error"
