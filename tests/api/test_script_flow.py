"""The issue's "done when": one management key deploys, links and issues a key; the
member's key then calls the model through the OpenAI SDK, against the running server."""

import httpx
import pytest
from openai import OpenAI

from accounts.models import APIKey, Permission
from accounts.services import apikey_create
from ai.models import AIModel, ModelLink
from tests.ai.conftest import wait_for_usage


@pytest.mark.django_db(transaction=True)
def test_it_serves_a_deployed_model_to_a_members_key(asgi_server, fake_upstream, staff, acme, bob):
    _, manage_key = apikey_create(user=staff, name="ops", permissions=[Permission.MANAGE])
    api = httpx.Client(
        base_url=f"{asgi_server.url}/api/v1", headers={"Authorization": f"Bearer {manage_key}"}
    )

    deployed = api.post(
        "/ai/models/deploy",
        json={
            "name": "team-chat",
            "upstreams": [
                {"name": "primary", "base_url": fake_upstream.base_url(status=500)},
                {"name": "backup", "base_url": fake_upstream.base_url(), "priority": 1},
            ],
        },
    )
    assert deployed.status_code == 201, deployed.text
    link = api.post(
        "/ai/links",
        json={
            "model": deployed.json()["id"],
            "organisation": "acme",
            "requests_per_minute": 60,
            "tokens_per_day": 100_000,
        },
    )
    assert link.status_code == 201, link.text
    key = api.post(
        "/auth/keys",
        json={"name": "bob's script", "user_id": bob.pk, "organisation": "acme"},
    )
    assert key.status_code == 201, key.text

    client = OpenAI(base_url=f"{asgi_server.url}/v1", api_key=key.json()["key"], max_retries=0)
    reply = client.chat.completions.create(
        model="team-chat", messages=[{"role": "user", "content": "Hello"}]
    )

    assert reply.choices[0].message.content
    model = AIModel.objects.get(name="team-chat")
    assert model.upstreams.count() == 2
    assert ModelLink.objects.get(model=model, organisation=acme).tokens_per_day == 100_000
    (event,) = wait_for_usage(1)
    assert (event.user_id, event.model_id, event.api_key_id) == (
        bob.pk,
        model.pk,
        APIKey.objects.get(name="bob's script").pk,
    )
    assert event.upstream.name == "backup"
