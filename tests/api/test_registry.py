"""/api/v1/ai/models, upstreams and links: deploy, config, write-only credentials, filters."""

from decimal import Decimal

from django.contrib.auth.models import Group

from accounts.models import Permission
from accounts.roles import MODEL_MANAGER, TRAINER
from accounts.services import apikey_create
from ai.models import AIModel, ModelLink, Upstream
from tests.api.conftest import UPSTREAM_SECRET, as_key
from tests.factories import AIModelFactory, ModelLinkFactory

DEPLOY = {
    "name": "team-chat",
    "display_name": "Team chat",
    "kind": "chat",
    "tags": ["team"],
    "config": {"context_window": 8192, "max_output_tokens": 512},
    "upstreams": [
        {"name": "primary", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-one"},
        {"name": "backup", "base_url": "http://127.0.0.1:8/v1", "priority": 1},
    ],
}


def test_it_deploys_a_model_with_its_upstreams(api, keys):
    response = as_key(api, keys["manager"]).post("/api/v1/ai/models/deploy", DEPLOY, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "team-chat" and body["status"] == "unknown"
    assert [u["name"] for u in body["upstreams"]] == ["primary", "backup"]
    assert [u["has_api_key"] for u in body["upstreams"]] == [True, False]
    model = AIModel.objects.get(name="team-chat")
    assert model.config == {"context_window": 8192, "max_output_tokens": 512}
    assert Upstream.objects.get(model=model, name="primary").api_key == "sk-one"


def test_it_deploys_nothing_when_an_upstream_is_invalid(api, keys):
    body = {**DEPLOY, "upstreams": [DEPLOY["upstreams"][0], {"name": "bad", "base_url": "nope"}]}
    response = as_key(api, keys["staff"]).post("/api/v1/ai/models/deploy", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "upstreams.1.base_url"
    assert not AIModel.objects.filter(name="team-chat").exists()


def test_it_refuses_a_duplicate_model_name_naming_the_field(api, keys, registry):
    body = {**DEPLOY, "name": "acme-chat"}
    response = as_key(api, keys["staff"]).post("/api/v1/ai/models/deploy", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "name"


def test_it_never_returns_upstream_credentials(api, keys, registry):
    client = as_key(api, keys["staff"])
    for url in (
        "/api/v1/ai/upstreams",
        f"/api/v1/ai/upstreams/{registry.upstream.pk}",
        "/api/v1/ai/models",
        f"/api/v1/ai/models/{registry.model.pk}",
    ):
        response = client.get(url)
        assert response.status_code == 200
        assert UPSTREAM_SECRET not in response.content.decode()
        assert '"api_key"' not in response.content.decode()
    detail = client.get(f"/api/v1/ai/upstreams/{registry.upstream.pk}").json()
    assert detail["has_api_key"] is True


def test_it_keeps_an_upstream_key_unless_a_new_one_is_sent(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    assert client.patch(url, {"priority": 2}, format="json").status_code == 200
    registry.upstream.refresh_from_db()
    assert (registry.upstream.priority, registry.upstream.api_key) == (2, UPSTREAM_SECRET)
    response = client.patch(url, {"api_key": "sk-rotated"}, format="json")
    assert "sk-rotated" not in response.content.decode()
    registry.upstream.refresh_from_db()
    assert registry.upstream.api_key == "sk-rotated"


def test_it_sets_an_upstreams_protocols(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    detail = client.get(url).json()
    assert (detail["api_style"], detail["speaks_responses"]) == ("openai", False)
    body = {"api_style": "anthropic", "speaks_responses": True}
    response = client.patch(url, body, format="json")
    assert response.status_code == 200
    assert (response.json()["api_style"], response.json()["speaks_responses"]) == (
        "anthropic",
        True,
    )
    registry.upstream.refresh_from_db()
    assert (registry.upstream.api_style, registry.upstream.speaks_responses) == ("anthropic", True)


def test_it_refuses_an_unknown_api_style_or_a_loose_boolean(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    for field, value in [
        ("api_style", "gemini"),
        ("api_style", "Anthropic"),
        ("api_style", None),
        ("speaks_responses", "yes"),
        ("speaks_responses", 1),
        ("speaks_responses", "true"),
        ("speaks_responses", None),
    ]:
        response = client.patch(url, {field: value}, format="json")
        assert response.status_code == 400, (field, value)
        assert response.json()["error"]["param"] == field
    registry.upstream.refresh_from_db()
    assert (registry.upstream.api_style, registry.upstream.speaks_responses) == ("openai", False)


def test_it_reads_and_replaces_a_model_config(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/models/{registry.model.pk}/config"
    assert client.get(url).json() == {
        "context_window": 4096,
        "max_output_tokens": 256,
        "default_temperature": None,
    }
    response = client.put(url, {"default_temperature": 0.5}, format="json")
    assert response.json()["default_temperature"] == 0.5
    assert response.json()["context_window"] is None
    registry.model.refresh_from_db()
    assert registry.model.config == {"default_temperature": 0.5}


def test_it_names_the_config_field_that_is_wrong(api, keys, registry):
    url = f"/api/v1/ai/models/{registry.model.pk}/config"
    response = as_key(api, keys["staff"]).put(url, {"default_temperature": 5}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "default_temperature"
    registry.model.refresh_from_db()
    assert "default_temperature" not in registry.model.config


def test_it_deletes_a_model_with_its_upstreams_and_links(api, keys, registry):
    response = as_key(api, keys["manager"]).delete(f"/api/v1/ai/models/{registry.model.pk}")
    assert response.status_code == 204
    assert not Upstream.objects.filter(pk=registry.upstream.pk).exists()
    assert not ModelLink.objects.filter(pk=registry.link.pk).exists()


def test_it_links_a_model_to_an_org_by_slug_with_limits(api, keys, acme):
    model = AIModelFactory(name="other")
    body = {"model": model.pk, "organisation": "acme", "tokens_per_day": 1000}
    response = as_key(api, keys["manager"]).post("/api/v1/ai/links", body, format="json")
    assert response.status_code == 201
    assert response.json()["organisation"] == "acme"
    assert ModelLink.objects.get(model=model, organisation=acme).tokens_per_day == 1000


def test_it_refuses_a_link_with_two_owners_or_a_duplicate(api, keys, registry, bob):
    client = as_key(api, keys["staff"])
    both = {"model": registry.model.pk, "organisation": "acme", "user": bob.pk}
    response = client.post("/api/v1/ai/links", both, format="json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "organisation")
    again = {"model": registry.model.pk, "organisation": "acme"}
    response = client.post("/api/v1/ai/links", again, format="json")
    assert response.status_code == 400
    assert ModelLink.objects.count() == 1


def test_it_filters_links_by_model_user_and_org(api, keys, registry, bob, charlie):
    other = AIModelFactory(name="other")
    ModelLinkFactory(model=other, user=bob)
    ModelLinkFactory(model=other, user=charlie)
    client = as_key(api, keys["staff"])

    def ids(query):
        return [link["id"] for link in client.get(f"/api/v1/ai/links?{query}").json()["results"]]

    assert ids("org=acme") == [registry.link.pk]
    assert len(ids(f"model={other.pk}")) == 2
    assert len(ids(f"user={bob.pk}")) == 1
    assert ids(f"model={other.pk}&ordering=-id") == sorted(ids(f"model={other.pk}"), reverse=True)


def test_it_paginates_and_orders_models(api, keys):
    for name in ("b", "a", "c"):
        AIModelFactory(name=name)
    client = as_key(api, keys["staff"])
    page = client.get("/api/v1/ai/models?page_size=2&ordering=-name").json()
    assert page["count"] == 3 and page["next"]
    assert [m["name"] for m in page["results"]] == ["c", "b"]


def test_it_refuses_a_key_without_the_manage_permission(api, registry, staff):
    _, plain = apikey_create(user=staff, name="proxy only", permissions=[Permission.PROXY])
    response = as_key(api, plain).get("/api/v1/ai/models")
    assert response.status_code == 403
    assert "manage" in response.json()["error"]["message"]


def test_it_refuses_writes_from_a_trainer(api, registry, charlie):
    charlie.groups.add(Group.objects.get(name=TRAINER))
    _, plain = apikey_create(user=charlie, name="t", permissions=[Permission.MANAGE])
    client = as_key(api, plain)
    assert client.get("/api/v1/ai/models").status_code == 200
    assert client.delete(f"/api/v1/ai/models/{registry.model.pk}").status_code == 403
    assert AIModel.objects.filter(pk=registry.model.pk).exists()


def test_it_creates_the_role_groups_with_model_permissions(db):
    manager = set(
        Group.objects.get(name=MODEL_MANAGER).permissions.values_list("codename", flat=True)
    )
    assert {"add_aimodel", "change_upstream", "delete_modellink"} <= manager
    trainer = set(Group.objects.get(name=TRAINER).permissions.values_list("codename", flat=True))
    assert "view_aimodel" in trainer and "delete_aimodel" not in trainer


def test_it_sets_and_checks_a_models_cache_prices(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/models/{registry.model.pk}"
    assert client.get(url).json()["cached_input_price_per_million"] is None  # the input price
    prices = {"cached_input_price_per_million": "0.3", "cache_write_price_per_million": "3.75"}
    response = client.patch(url, prices, format="json")
    assert response.status_code == 200
    assert response.json()["cached_input_price_per_million"] == "0.300000"
    registry.model.refresh_from_db()
    assert registry.model.cache_write_price_per_million == Decimal("3.75")
    for bad in ("-1", "NaN", "Infinity", "abc", "1" * 20, True):
        response = client.patch(url, {"cache_write_price_per_million": bad}, format="json")
        assert response.status_code == 400, bad
        assert "cache_write_price_per_million" in response.text
    assert (
        client.patch(url, {"cache_write_price_per_million": None}, format="json").status_code == 200
    )
    registry.model.refresh_from_db()
    assert registry.model.cache_write_price_per_million is None


def test_it_sets_an_upstreams_stream_timeouts_as_json_numbers_only(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    assert client.get(url).json()["idle_timeout"] == 60.0
    response = client.patch(url, {"idle_timeout": 2.5, "first_byte_timeout": 3}, format="json")
    assert response.status_code == 200
    registry.upstream.refresh_from_db()
    assert (registry.upstream.idle_timeout, registry.upstream.first_byte_timeout) == (2.5, 3.0)
    for bad in ("5", True, 0, None):
        response = client.patch(url, {"idle_timeout": bad}, format="json")
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "idle_timeout"


def test_it_sets_a_models_response_cache_ttl(api, keys, registry):
    client = as_key(api, keys["manager"])
    url = f"/api/v1/ai/models/{registry.model.pk}"
    assert client.get(url).json()["response_cache_ttl"] is None
    assert client.patch(url, {"response_cache_ttl": 300}, format="json").status_code == 200
    registry.model.refresh_from_db()
    assert registry.model.response_cache_ttl == 300
    response = client.patch(url, {"response_cache_ttl": -1}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_cache_ttl"
