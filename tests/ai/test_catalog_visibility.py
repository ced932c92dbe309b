"""Seed 000's catalog (/api/ai/models): listed models for everyone signed in, unlisted ones
for their linked tenants only; /api/ai/my-models stays the caller's links; no credential
is ever shown, and seeing a listed model does not grant its use."""

import httpx
import pytest
from django.urls import reverse

from accounts.services import apikey_create
from ai.models import AIModel
from tests.ai.conftest import UPSTREAM_SECRET, session_client
from tests.api.conftest import MANAGE

pytestmark = pytest.mark.django_db(transaction=True)

SUMMARY = {"id", "name", "modelName", "kind", "config", "tags"}


@pytest.fixture
def listed(world):
    """acme-chat is listed; acme-embed and acme-image stay unlisted."""
    AIModel.objects.filter(pk=world.chat.pk).update(is_listed=True)
    world.chat.refresh_from_db()
    world.chat.save()  # a save invalidates the cached registry
    return world.chat


def _catalog(world, user) -> httpx.Response:
    response = session_client(user, world.url).get("/api/ai/models")
    assert response.status_code == 200, response.text
    assert all(set(m) == SUMMARY for m in response.json())
    assert UPSTREAM_SECRET not in response.text and "127.0.0.1" not in response.text
    return response


def _names(response: httpx.Response) -> list[str]:
    return [m["modelName"] for m in response.json()]


def test_an_outsider_sees_listed_models_but_not_unlisted_ones(world, listed, charlie):
    assert _names(_catalog(world, charlie)) == ["acme-chat", "charlie-chat"]


def test_a_linked_tenant_sees_listed_and_unlisted_models(world, listed, alice):
    assert _names(_catalog(world, alice)) == ["acme-chat", "acme-embed", "acme-image"]


def test_nothing_is_listed_by_default(world, charlie):
    assert _names(_catalog(world, charlie)) == ["charlie-chat"]


def test_an_inactive_listed_model_is_not_listed(world, listed, charlie):
    listed.is_active = False
    listed.save()
    assert _names(_catalog(world, charlie)) == ["charlie-chat"]


def test_my_models_stays_the_callers_links(world, listed, charlie):
    response = session_client(charlie, world.url).get("/api/ai/my-models")
    assert [item["model"]["modelName"] for item in response.json()] == ["charlie-chat"]


def test_seeing_a_listed_model_does_not_grant_its_use(world, listed, fake_upstream):
    response = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.charlie_key}"},
        json={"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert fake_upstream.requests() == []


def test_a_keys_model_scope_narrows_the_listed_models_too(world, listed, charlie):
    own = world.charlie_model
    key = apikey_create(user=charlie, name="narrow", allowed_models=[own])[1]
    response = httpx.get(
        f"{world.url}/api/ai/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert _names(response) == ["charlie-chat"]


def test_staff_list_a_model_through_the_management_api(world, charlie, staff_user):
    key = apikey_create(user=staff_user, name="ops", permissions=MANAGE)[1]
    response = httpx.patch(
        f"{world.url}/api/v1/ai/models/{world.embed.pk}",
        headers={"Authorization": f"Bearer {key}"},
        json={"is_listed": True},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_listed"] is True
    assert _names(_catalog(world, charlie)) == ["acme-embed", "charlie-chat"]
    listed = httpx.get(
        f"{world.url}/api/v1/ai/models?is_listed=true",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert [m["name"] for m in listed.json()["results"]] == ["acme-embed"]


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("ops", is_staff=True)


def test_the_admin_lists_a_model_from_its_list_page(world, admin_client, charlie):
    url = reverse("admin:ai_aimodel_changelist")
    page = admin_client.get(f"{url}?is_listed__exact=0").content.decode()
    assert 'name="form-0-is_listed"' in page
    rows = list(AIModel.objects.order_by("name").values_list("pk", flat=True))
    form = {"form-TOTAL_FORMS": len(rows), "form-INITIAL_FORMS": len(rows), "_save": "Save"}
    for index, pk in enumerate(rows):
        form[f"form-{index}-id"] = pk
    form[f"form-{rows.index(world.image.pk)}-is_listed"] = "on"
    assert admin_client.post(url, form).status_code == 302
    assert list(AIModel.objects.filter(is_listed=True)) == [world.image]
    assert _names(_catalog(world, charlie)) == ["acme-image", "charlie-chat"]
