"""Keys with per-instance permissions (seed 003): permission_mode, instance_ids, /permissions.

An id is refused alike whether it names no instance or one the key's owner may not
use, and a field the route does not take is refused, never dropped.
"""

import pytest

from accounts.models import APIKey, PermissionMode
from accounts.services import apikey_create
from ai.models import Instance
from tests.api.conftest import as_key
from tests.factories import (
    AIModelFactory,
    MembershipFactory,
    ModelLinkFactory,
    OrganisationFactory,
    UpstreamFactory,
)

HUGE = 10**20  # past any database integer


def _instance(name, model=None, organisation=None) -> Instance:
    instance = Instance.objects.create(
        name=name, backend="command", command_override="true", organisation=organisation
    )
    if model is not None:
        UpstreamFactory(model=model, name=f"{name}-up", base_url="", instance=instance)
    return instance


@pytest.fixture
def instances(registry, acme, charlie):
    """acme's model served by acme's instance and by one of no organisation; charlie's
    model by his organisation's instance; and one instance that serves nothing."""
    globex = OrganisationFactory(name="Globex", slug="globex")
    MembershipFactory(user=charlie, organisation=globex)
    charlie_model = AIModelFactory(name="charlie-chat")
    ModelLinkFactory(model=charlie_model, user=charlie)
    return {
        "acme": _instance("acme-smol", registry.model, organisation=acme),
        "shared": _instance("shared-smol", registry.model),
        "globex": _instance("globex-smol", charlie_model, organisation=globex),
        "bare": _instance("bare"),
    }


def _create(client, **body):
    return client.post("/api/v1/auth/keys", {"name": "scoped", **body}, format="json")


def _error(response, param):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    return error["message"]


# --- Create and read -----------------------------------------------------------------------


def test_it_creates_a_per_instance_key_and_lists_its_instances(api, keys, instances, bob):
    client = as_key(api, keys["bob"])
    ids = [instances["shared"].pk, instances["acme"].pk]
    response = _create(client, permission_mode="per_instance", instance_ids=ids)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["permission_mode"] == "per_instance" and sorted(body["instance_ids"]) == sorted(ids)
    key = APIKey.objects.get(pk=body["id"])
    assert key.permission_mode == PermissionMode.PER_INSTANCE
    assert set(key.instances.all()) == {instances["shared"], instances["acme"]}
    permissions = client.get(f"/api/v1/auth/keys/{key.pk}/permissions").json()
    assert permissions == sorted(
        [
            {"instance_id": instances["acme"].pk, "instance_name": "acme-smol"},
            {"instance_id": instances["shared"].pk, "instance_name": "shared-smol"},
        ],
        key=lambda p: p["instance_id"],
    )
    detail = client.get(f"/api/v1/auth/keys/{key.pk}").json()
    assert detail["permission_mode"] == "per_instance"


def test_an_allow_all_key_has_no_instance_permissions_to_list(api, keys, registry):
    client = as_key(api, keys["bob"])
    response = _create(client)
    assert response.json()["permission_mode"] == "allow_all"
    assert response.json()["instance_ids"] == []
    assert client.get(f"/api/v1/auth/keys/{response.json()['id']}/permissions").json() == []


def test_someone_elses_key_permissions_are_not_found(api, keys, instances, bob):
    key, _ = apikey_create(
        user=bob, name="bob's", permission_mode="per_instance", instances=[instances["acme"]]
    )
    for persona in ("charlie", "alice"):  # alice owns bob's organisation: still not her key
        response = as_key(api, keys[persona]).get(f"/api/v1/auth/keys/{key.pk}/permissions")
        assert response.status_code == 404
        assert instances["acme"].name not in response.content.decode()
    assert as_key(api, keys["staff"]).get(f"/api/v1/auth/keys/{key.pk}/permissions").json() == [
        {"instance_id": instances["acme"].pk, "instance_name": "acme-smol"}
    ]


# --- What is refused -----------------------------------------------------------------------


def test_a_per_instance_key_needs_an_instance(api, keys, instances):
    client = as_key(api, keys["bob"])
    for body in ({}, {"instance_ids": []}):
        message = _error(_create(client, permission_mode="per_instance", **body), "instance_ids")
        assert "at least one" in message
    assert not APIKey.objects.filter(name="scoped").exists()


def test_instance_ids_without_per_instance_are_refused(api, keys, instances):
    client = as_key(api, keys["bob"])
    for body in ({"instance_ids": [instances["acme"].pk]}, {"permission_mode": "allow_all"}):
        response = _create(client, **{"instance_ids": [instances["acme"].pk], **body})
        assert "per_instance" in _error(response, "instance_ids")
    assert not APIKey.objects.filter(name="scoped").exists()


def test_an_instance_the_owner_may_not_use_is_refused_like_one_that_does_not_exist(
    api, keys, instances
):
    client = as_key(api, keys["bob"])
    messages = set()
    # globex's instance (another organisation), one serving no model of bob's, and none.
    for missing in (instances["globex"].pk, instances["bare"].pk, 999_999):
        ids = [instances["acme"].pk, missing]
        message = _error(
            _create(client, permission_mode="per_instance", instance_ids=ids), "instance_ids"
        )
        assert str(missing) in message and str(instances["acme"].pk) not in message
        messages.add(message.replace(str(missing), "N"))
    assert len(messages) == 1  # nothing tells an existing instance from a missing one
    assert "globex-smol" not in "".join(messages)
    assert not APIKey.objects.filter(name="scoped").exists()


def test_the_outsider_may_not_name_acmes_instances(api, keys, instances):
    ids = [instances["acme"].pk]
    response = _create(
        as_key(api, keys["charlie"]), permission_mode="per_instance", instance_ids=ids
    )
    assert str(instances["acme"].pk) in _error(response, "instance_ids")


def test_staff_cannot_give_someone_an_instance_they_may_not_use(api, keys, instances, bob):
    client = as_key(api, keys["staff"])
    body = {"user_id": bob.pk, "permission_mode": "per_instance"}
    response = _create(client, **body, instance_ids=[instances["globex"].pk])
    assert str(instances["globex"].pk) in _error(response, "instance_ids")
    response = _create(client, **body, instance_ids=[instances["shared"].pk])
    assert response.status_code == 201, response.content


def test_a_key_acting_for_an_organisation_may_not_use_anothers_instance(
    api, keys, instances, bob, charlie
):
    # bob joins globex too: its instance is his to use, but not through an acme key.
    MembershipFactory(user=bob, organisation=instances["globex"].organisation)
    ModelLinkFactory(model=instances["globex"].upstreams.get().model, user=bob)
    client = as_key(api, keys["bob"])
    body = {"permission_mode": "per_instance", "instance_ids": [instances["globex"].pk]}
    assert _create(client, **body, organisation="acme").status_code == 400
    assert _create(client, **body).status_code == 201


def test_an_operator_may_name_any_instance(api, keys, instances):
    ids = [instances["bare"].pk, instances["globex"].pk]
    response = _create(
        as_key(api, keys["manager"]), permission_mode="per_instance", instance_ids=ids
    )
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("1", "instance_ids"),
        (["1"], "instance_ids.0"),
        ([[1]], "instance_ids.0"),
        ([{"id": 1}], "instance_ids.0"),
        ([HUGE], "instance_ids.0"),
        ([2**63], "instance_ids.0"),
        ([-1], "instance_ids.0"),
        ([0], "instance_ids.0"),
        ([True], "instance_ids.0"),
        ([1.5], "instance_ids.0"),
        ([None], "instance_ids.0"),
        (None, "instance_ids"),
        ({"1": 1}, "instance_ids"),
        (list(range(1, 102)), "instance_ids"),
    ],
    ids=[
        "string",
        "string-item",
        "nested-list",
        "object-item",
        "huge",
        "past-bigint",
        "negative",
        "zero",
        "boolean",
        "float",
        "null-item",
        "null",
        "object",
        "too-many",
    ],
)
def test_it_refuses_wrong_typed_instance_ids(api, keys, instances, value, param):
    client = as_key(api, keys["bob"])
    _error(_create(client, permission_mode="per_instance", instance_ids=value), param)
    assert not APIKey.objects.filter(name="scoped").exists()


@pytest.mark.parametrize("mode", ["everything", "PER_INSTANCE", 1, None, ["per_instance"]], ids=str)
def test_it_refuses_an_unknown_permission_mode(api, keys, instances, mode):
    response = _create(as_key(api, keys["bob"]), permission_mode=mode)
    _error(response, "permission_mode")


# --- Unknown fields ------------------------------------------------------------------------


def test_it_refuses_unknown_fields_naming_them_instead_of_dropping_them(api, keys, instances):
    client = as_key(api, keys["bob"])
    # What llamactl's older clients send: instance permissions in another field.
    body = {
        "permission_mode": "per_instance",
        "instance_ids": [instances["acme"].pk],
        "instance_permissions": [{"instance_id": instances["acme"].pk, "can_infer": True}],
    }
    assert _error(_create(client, **body), "instance_permissions") == "Unknown field."
    message = _error(_create(client, enabled=True, scope="all"), "enabled")
    assert message == "Unknown fields: enabled, scope."
    assert not APIKey.objects.filter(name="scoped").exists()


def test_it_refuses_unknown_fields_when_replacing_permissions(api, keys, registry):
    url = f"/api/v1/auth/keys/{registry.bob_key.pk}/permissions"
    body = {"permissions": ["read"], "instances": [1]}
    response = as_key(api, keys["bob"]).put(url, body, format="json")
    assert _error(response, "instances") == "Unknown field."
    registry.bob_key.refresh_from_db()
    assert registry.bob_key.permissions == ["proxy", "read"]


# --- Replacing a key's instance permissions --------------------------------------------------


def test_it_switches_a_key_to_per_instance_and_back(api, keys, instances, registry):
    client = as_key(api, keys["bob"])
    key = registry.bob_key
    url = f"/api/v1/auth/keys/{key.pk}/permissions"
    body = {
        "permissions": ["proxy"],
        "permission_mode": "per_instance",
        "instance_ids": [instances["acme"].pk],
    }
    response = client.put(url, body, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["permission_mode"], response.json()["instance_ids"]) == (
        "per_instance",
        [instances["acme"].pk],
    )
    # The mode alone keeps the instances; the ids alone replace them.
    body = {"permissions": ["proxy"], "permission_mode": "per_instance"}
    response = client.put(url, body, format="json")
    assert response.json()["instance_ids"] == [instances["acme"].pk]
    ids = [instances["shared"].pk]
    response = client.put(url, {"permissions": ["proxy"], "instance_ids": ids}, format="json")
    assert response.json()["instance_ids"] == ids
    assert client.get(url).json() == [{"instance_id": ids[0], "instance_name": "shared-smol"}]
    # Back to allow_all: its instances go.
    body = {"permissions": ["proxy"], "permission_mode": "allow_all"}
    response = client.put(url, body, format="json")
    assert (response.json()["permission_mode"], response.json()["instance_ids"]) == (
        "allow_all",
        [],
    )
    key.refresh_from_db()
    assert (key.permission_mode, list(key.instances.all())) == ("allow_all", [])
    assert client.get(url).json() == []


def test_it_refuses_instance_ids_for_an_allow_all_key_and_a_foreign_instance(
    api, keys, instances, registry
):
    client = as_key(api, keys["bob"])
    url = f"/api/v1/auth/keys/{registry.bob_key.pk}/permissions"
    ids = [instances["acme"].pk]
    _error(
        client.put(url, {"permissions": ["proxy"], "instance_ids": ids}, format="json"),
        "instance_ids",
    )
    body = {"permissions": ["proxy"], "permission_mode": "per_instance"}
    _error(client.put(url, body, format="json"), "instance_ids")  # none given, none kept
    body["instance_ids"] = [instances["globex"].pk]
    _error(client.put(url, body, format="json"), "instance_ids")
    body["instance_ids"] = [[instances["acme"].pk]]
    _error(client.put(url, body, format="json"), "instance_ids.0")
    registry.bob_key.refresh_from_db()
    assert registry.bob_key.permission_mode == "allow_all"
    assert not registry.bob_key.instances.exists()


def test_the_outsider_cannot_replace_someone_elses_key_permissions(api, keys, instances, registry):
    url = f"/api/v1/auth/keys/{registry.bob_key.pk}/permissions"
    body = {"permissions": ["proxy"], "permission_mode": "per_instance", "instance_ids": [1]}
    response = as_key(api, keys["charlie"]).put(url, body, format="json")
    assert response.status_code == 404
    registry.bob_key.refresh_from_db()
    assert registry.bob_key.permission_mode == "allow_all"
