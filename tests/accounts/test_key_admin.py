"""The admin's key forms show and edit a key's permission mode and instances, checked as
the API checks them."""

import pytest
from django.urls import reverse

from accounts.models import APIKey
from accounts.services import apikey_create
from ai.models import Instance
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def instances(acme):
    model = AIModelFactory(name="acme-chat")
    ModelLinkFactory(model=model, organisation=acme)
    mine = Instance.objects.create(name="acme-smol", backend="command", command_override="x")
    UpstreamFactory(model=model, base_url="", instance=mine)
    other = Instance.objects.create(name="elsewhere", backend="command", command_override="x")
    return mine, other


def _add(admin_client, user, **fields):
    return admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"user": user.pk, "name": "from-admin", "permissions": ["proxy"], **fields},
    )


def test_it_creates_a_per_instance_key(admin_client, instances, bob):
    mine, _ = instances
    response = _add(admin_client, bob, permission_mode="per_instance", instances=[mine.pk])
    assert response.status_code == 302  # to the page that shows the key once
    key = APIKey.objects.get(name="from-admin")
    assert (key.permission_mode, list(key.instances.all())) == ("per_instance", [mine])
    page = admin_client.get(reverse("admin:accounts_apikey_change", args=[key.pk]))
    html = page.content.decode()
    assert 'name="permission_mode"' in html and "acme-smol" in html


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"permission_mode": "per_instance"}, "needs at least one instance"),
        ({"permission_mode": "allow_all", "instances": ["MINE"]}, "only for per-instance keys"),
        ({"permission_mode": "per_instance", "instances": ["OTHER"]}, "may not use: elsewhere"),
    ],
    ids=["none", "with-allow-all", "not-the-owners"],
)
def test_it_refuses_a_key_with_wrong_instances(admin_client, instances, bob, fields, error):
    mine, other = instances
    ids = {"MINE": mine.pk, "OTHER": other.pk}
    fields = {k: [ids[i] for i in v] if k == "instances" else v for k, v in fields.items()}
    response = _add(admin_client, bob, **fields)
    assert error in response.content.decode()
    assert not APIKey.objects.filter(name="from-admin").exists()


def test_it_edits_a_keys_mode_and_instances(admin_client, instances, bob):
    mine, other = instances
    key, _ = apikey_create(user=bob, name="bob's")
    url = reverse("admin:accounts_apikey_change", args=[key.pk])
    form = {"name": "bob's", "permissions": ["proxy"], "permission_mode": "per_instance"}
    refused = admin_client.post(url, {**form, "instances": [other.pk]})
    assert "may not use: elsewhere" in refused.content.decode()
    response = admin_client.post(url, {**form, "instances": [mine.pk]})
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.permission_mode, list(key.instances.all())) == ("per_instance", [mine])
    response = admin_client.post(url, {**form, "permission_mode": "allow_all"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.permission_mode, list(key.instances.all())) == ("allow_all", [])
