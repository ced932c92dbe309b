"""The panel's own AI routes (seed 000)."""

import httpx
import pytest

from accounts.models import Tier
from ai.models import ModelLink
from tests.ai.conftest import UPSTREAM_SECRET, session_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice_browser(world, alice):
    return session_client(alice, world.url)


def test_it_replies_to_a_chat_message_with_the_default_model(world, alice_browser):
    response = alice_browser.post(
        "/api/ai/chat",
        json={
            "message": "How do I increase my RAM?",
            "systemPrompt": "Be brief.",
            "history": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
        },
    )
    assert response.status_code == 200
    assert response.json()["reply"].startswith("tok0 tok1")
    assert response.json()["model"] == "acme-chat"


def test_it_sends_system_prompt_history_and_message_upstream_in_order(
    world, alice_browser, fake_upstream
):
    alice_browser.post(
        "/api/ai/chat",
        json={
            "message": "Now",
            "systemPrompt": "Sys",
            "history": [{"role": "user", "content": "Before"}],
        },
    )
    (request,) = fake_upstream.requests()
    assert request["json"]["messages"] == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "Before"},
        {"role": "user", "content": "Now"},
    ]


def test_it_uses_the_model_named_by_model_id(world, charlie):
    browser = session_client(charlie, world.url)
    response = browser.post(
        "/api/ai/chat", json={"message": "Hi", "modelId": world.charlie_model.id}
    )
    assert response.json()["model"] == "charlie-chat"


def test_it_gives_a_friendly_reply_when_no_model_is_configured(world, alice_browser):
    ModelLink.objects.all().delete()
    response = alice_browser.post("/api/ai/chat", json={"message": "Hi"})
    assert response.status_code == 200
    assert "not set up" in response.json()["reply"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"message": ""},
        {"message": "Hi", "history": "nope"},
        {"message": "Hi", "history": [{"role": "x"}]},
    ],
)
def test_it_refuses_a_malformed_chat_message(world, alice_browser, body):
    response = alice_browser.post("/api/ai/chat", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_it_keeps_studio_for_the_paid_tier(world, alice_browser):
    response = alice_browser.post("/api/ai/studio", json={"message": "Hi"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tier_required"


def test_it_opens_studio_to_a_member_of_a_paid_organisation(
    world, alice_browser, acme, fake_upstream
):
    acme.tier = Tier.PAID
    acme.save()
    response = alice_browser.post(
        "/api/ai/studio", json={"message": "Hi", "maxTokens": 3, "temperature": 0.2}
    )
    assert response.status_code == 200
    assert response.json()["reply"] == "tok0 tok1 tok2 "
    (request,) = fake_upstream.requests()
    assert (request["json"]["max_tokens"], request["json"]["temperature"]) == (3, 0.2)


@pytest.mark.parametrize("extra", [{"temperature": 3}, {"maxTokens": 0}, {"temperature": "hot"}])
def test_it_refuses_out_of_range_studio_settings(world, alice, extra):
    alice.tier = Tier.ENTERPRISE
    alice.save()
    browser = session_client(alice, world.url)
    response = browser.post("/api/ai/studio", json={"message": "Hi", **extra})
    assert response.status_code == 400


def test_it_lists_models_without_any_upstream_detail(world, alice_browser):
    response = alice_browser.get("/api/ai/models")
    names = [m["modelName"] for m in response.json()]
    assert names == ["acme-chat", "acme-embed", "acme-image"]
    assert set(response.json()[0]) == {"id", "name", "modelName", "kind", "config", "tags"}
    assert UPSTREAM_SECRET not in response.text and "127.0.0.1" not in response.text


def test_it_lists_my_links_with_their_limits(world, alice_browser):
    ModelLink.objects.filter(model=world.chat).update(requests_per_minute=10)
    world.chat.save()
    response = alice_browser.get("/api/ai/my-models")
    chat = next(item for item in response.json() if item["model"]["modelName"] == "acme-chat")
    assert chat["limits"]["requests_per_minute"] == 10
    assert chat["owner"] == "organisation" and chat["isDefault"] is True


def test_it_requires_authentication_on_panel_routes(world):
    for path in ("/api/ai/models", "/api/ai/my-models"):
        assert httpx.get(f"{world.url}{path}").status_code == 401
    assert httpx.post(f"{world.url}/api/ai/chat", json={"message": "Hi"}).status_code == 401


def test_an_upstream_refusal_is_a_502_envelope_not_a_200(
    world, alice, alice_browser, fake_upstream
):
    from tests.ai.conftest import make_model

    refusing = make_model("refusing", owner=alice, base_urls=[fake_upstream.base_url(status=400)])
    refusing.save()  # signal the caches

    response = alice_browser.post("/api/ai/chat", json={"message": "Hi", "modelId": refusing.id})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
