"""Charlie, an outsider, sees and uses nothing of acme's, by any route or credential."""

import httpx
import pytest

from tests.ai.conftest import session_client

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def _key(world, key):
    return httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture(params=["key", "session"])
def as_charlie(request, world, charlie):
    if request.param == "key":
        return _key(world, world.charlie_key)
    return session_client(charlie, world.url)


def test_charlie_does_not_see_acmes_models_in_any_listing(world, as_charlie):
    listed = as_charlie.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["charlie-chat"]
    assert [m["modelName"] for m in as_charlie.get("/api/ai/models").json()] == ["charlie-chat"]
    my_models = as_charlie.get("/api/ai/my-models").json()
    assert [m["model"]["modelName"] for m in my_models] == ["charlie-chat"]


def test_charlie_cannot_fetch_acmes_model(world, as_charlie):
    response = as_charlie.get("/v1/models/acme-chat")
    assert response.status_code == 404
    assert response.json()["available_models"] == ["charlie-chat"]


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1", "/api/ai/openai/v1", "/api/v1/ai"])
def test_charlie_cannot_call_acmes_model_by_name(world, as_charlie, prefix):
    response = as_charlie.post(
        f"{prefix}/chat/completions", json={"model": "acme-chat", "messages": HI}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "acme" not in str(response.json()["available_models"])


def test_charlie_cannot_call_acmes_model_by_id(world, as_charlie):
    response = as_charlie.post(
        "/v1/chat/completions", json={"modelId": world.chat.id, "messages": HI}
    )
    assert response.status_code == 404
    response = as_charlie.post("/api/ai/chat", json={"modelId": world.chat.id, "message": "Hi"})
    assert response.status_code == 404


def test_charlie_gets_his_own_default_model_when_he_names_none(world, as_charlie):
    response = as_charlie.post("/v1/chat/completions", json={"messages": HI})
    assert response.status_code == 200
    assert response.json()["model"] == "charlie-chat"


def test_bob_uses_his_organisations_model(world):
    response = _key(world, world.bob_key).post(
        "/v1/chat/completions", json={"model": "acme-chat", "messages": HI}
    )
    assert response.status_code == 200


def test_a_key_scoped_to_one_model_cannot_use_another(world, alice):
    from accounts.services import apikey_create

    _, scoped = apikey_create(user=alice, name="scoped", allowed_models=[world.embed])
    client = _key(world, scoped)
    response = client.post("/v1/chat/completions", json={"model": "acme-chat", "messages": HI})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["acme-embed"]
