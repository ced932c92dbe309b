"""A per-instance key at work: on the /v1 routes it reaches a model only through its own
instances (never another instance, never a remote upstream); on the instance routes it
sees only its instances; a change to its permissions or its instances applies within the
cache's generation delay.
"""

import httpx
import pytest

from accounts.models import Permission, PermissionMode
from accounts.services import apikey_create, apikey_permissions_set
from ai.models import Instance, ModelKind
from fakeupstream import FakeUpstreamThread
from tests.ai.conftest import wait_for_usage
from tests.api.conftest import MANAGE
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory
from tests.instances import local_world
from tests.instances.local_world import HI, instance_running_on, serve_by_instance
from tests.servers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server

# The gateway's cache notices a change within about a second (its generation check); a
# key's snapshot would otherwise be kept 5 s, so waiting less shows the change was seen.
CACHE_DELAY = 3.0


@pytest.fixture
def other_server():
    """The process of a second instance of the same model."""
    with FakeUpstreamThread() as server:
        yield server


@pytest.fixture
def world(local, other_server, fake_upstream, alice, acme):
    """smol-chat served by the instances smol and smol-two and by a remote upstream, all at
    one priority; cloud-chat by the remote upstream only; alice's key limited to smol."""
    fake_upstream.clear()
    two = instance_running_on(other_server.port, name="smol-two")
    serve_by_instance(local.model, two)
    UpstreamFactory(model=local.model, name="cloud", base_url=fake_upstream.base_url())
    cloud = AIModelFactory(name="cloud-chat", kind=ModelKind.CHAT)
    UpstreamFactory(model=cloud, name="cloud-only", base_url=fake_upstream.base_url())
    ModelLinkFactory(model=cloud, organisation=acme)
    key, plain = apikey_create(
        user=alice, name="smol only", permission_mode="per_instance", instances=[local.instance]
    )
    local.two, local.other_server, local.cloud_server = two, other_server, fake_upstream
    local.key, local.plain = key, plain
    return local


def _chat(world, key, model="smol-chat", **headers) -> httpx.Response:
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json={"model": model, "messages": HI},
        timeout=30,
    )


def _chats(server) -> int:
    return len([r for r in server.requests() if r["path"] == "/v1/chat/completions"])


def _denied(response: httpx.Response) -> bool:
    return response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"


# --- The /v1 routes --------------------------------------------------------------------------


def test_a_per_instance_key_is_routed_only_to_its_instance(world):
    for _ in range(8):
        response = _chat(world, world.plain)
        assert response.status_code == 200, response.text
        assert response.headers["x-switchboard-upstream"] == "smol-local"

    assert (_chats(world.server), _chats(world.other_server), _chats(world.cloud_server)) == (
        8,
        0,
        0,
    )
    events = wait_for_usage(8)
    assert {e.upstream_id for e in events} == {world.upstream.id}


def test_an_allow_all_key_still_uses_every_upstream(world):
    seen = {_chat(world, world.alice_key).headers["x-switchboard-upstream"] for _ in range(40)}
    assert seen == {"smol-local", "smol-two-local", "cloud"}


def test_a_model_with_none_of_the_keys_instances_is_refused_and_not_listed(world):
    response = _chat(world, world.plain, model="cloud-chat")
    assert _denied(response), response.text
    assert "cloud-chat" in response.json()["error"]["message"]
    assert _chats(world.cloud_server) == 0

    def listed(key):
        response = httpx.get(f"{world.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        return [m["id"] for m in response.json()["data"]]

    assert listed(world.plain) == ["smol-chat"]
    assert listed(world.alice_key) == ["cloud-chat", "smol-chat"]


def test_a_key_whose_instance_stops_is_not_sent_to_the_models_other_upstreams(world):
    # smol stops: the model is still served by smol-two and the cloud, but not for this key.
    local_world.set_status(world.instance, "stopped", port=None)
    response = wait_for(
        lambda: (r := _chat(world, world.plain)).status_code == 503 and r, CACHE_DELAY, "503"
    )
    assert response.json()["error"]["message"] == "Instance 'smol' is stopped."
    assert _chat(world, world.alice_key).status_code == 200


def test_a_permission_removed_while_the_key_is_in_use_refuses_its_next_requests(world):
    assert _chat(world, world.plain).status_code == 200
    apikey_permissions_set(
        key=world.key,
        permissions=world.key.permissions,
        permission_mode=PermissionMode.PER_INSTANCE,
        instances=[world.two],
    )
    # Now smol-two is its instance: the same model, through the other process only.
    wait_for(
        lambda: _chat(world, world.plain).headers.get("x-switchboard-upstream") == "smol-two-local",
        CACHE_DELAY,
        "the key to move to smol-two",
    )
    served = _chats(world.server)
    for _ in range(5):
        assert _chat(world, world.plain).headers["x-switchboard-upstream"] == "smol-two-local"
    assert _chats(world.server) == served

    world.key.instances.clear()  # a per-instance key left with no instance
    wait_for(lambda: _denied(_chat(world, world.plain)), CACHE_DELAY, "the key to be refused")
    served = _chats(world.other_server), _chats(world.server), _chats(world.cloud_server)
    assert _denied(_chat(world, world.plain))
    assert (_chats(world.other_server), _chats(world.server), _chats(world.cloud_server)) == served


def test_a_deleted_instance_leaves_the_keys_permissions_and_the_rest_keeps_working(
    world, api_client
):
    world.key.instances.add(world.two)
    world.two.delete()

    assert list(world.key.instances.all()) == [world.instance]
    url = f"/api/v1/auth/keys/{world.key.pk}/permissions"
    owner = apikey_create(user=world.key.user, name="manage", permissions=MANAGE)[1]
    permissions = api_client.get(url, HTTP_AUTHORIZATION=f"Bearer {owner}").json()
    assert permissions == [{"instance_id": world.instance.pk, "instance_name": "smol"}]
    assert _chat(world, world.plain).headers["x-switchboard-upstream"] == "smol-local"

    world.instance.delete()  # its last instance: nothing is left to it
    assert not world.key.instances.exists()
    response = wait_for(
        lambda: (r := _chat(world, world.plain)).status_code != 200 and r, CACHE_DELAY, "refusal"
    )
    assert _denied(response), response.text
    # The model's remote upstream still serves anyone else.
    assert _chat(world, world.alice_key).headers["x-switchboard-upstream"] == "cloud"


def test_the_outsider_sees_nothing_of_acmes_instances(world, charlie):
    _, plain = apikey_create(user=charlie, name="charlie's")
    response = _chat(world, plain)
    assert response.status_code == 404
    models = httpx.get(f"{world.url}/v1/models", headers={"Authorization": f"Bearer {plain}"})
    assert "smol-chat" not in models.text
    assert _chats(world.server) == 0


# --- The instance routes ----------------------------------------------------------------------


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def operator_key(world, alice):
    """A manage key of an operator (staff), limited to smol."""
    alice.is_staff = True
    alice.save()
    _, plain = apikey_create(
        user=alice,
        name="operator",
        permissions=MANAGE,
        permission_mode="per_instance",
        instances=[world.instance],
    )
    return plain


def test_a_per_instance_key_relays_only_to_its_instance(world, operator_key):
    headers = {"Authorization": f"Bearer {operator_key}"}
    mine = httpx.get(f"{world.url}/api/v1/instances/smol/proxy/v1/models", headers=headers)
    assert mine.status_code == 200, mine.text
    before = len(world.other_server.requests())
    other = httpx.get(f"{world.url}/api/v1/instances/smol-two/proxy/v1/models", headers=headers)
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "permission_denied"
    assert len(world.other_server.requests()) == before
    # The same request with X-API-Key instead.
    other = httpx.get(
        f"{world.url}/api/v1/instances/smol-two/proxy/v1/models",
        headers={"X-API-Key": operator_key},
    )
    assert other.status_code == 403


def test_a_per_instance_key_manages_only_its_instances(world, operator_key, api_client):
    client = api_client
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_key}")
    listed = client.get("/api/v1/instances").json()
    assert [i["name"] for i in listed] == ["smol"]
    assert client.get("/api/v1/instances/smol").status_code == 200
    for method, path in [
        ("get", "/api/v1/instances/smol-two"),
        ("post", "/api/v1/instances/smol-two/stop"),
        ("post", "/api/v1/instances/smol-two/start"),
        ("post", "/api/v1/instances/smol-two/restart"),
        ("get", "/api/v1/instances/smol-two/logs"),
        ("put", "/api/v1/instances/smol-two"),
        ("delete", "/api/v1/instances/smol-two"),
        ("post", "/api/v1/instances/brand-new"),
    ]:
        body = {"backend_type": "command", "command_override": "true"}
        response = getattr(client, method)(path, body, format="json")
        assert response.status_code == 403, (method, path, response.content)
        assert response.json()["error"]["code"] == "permission_denied"
    two = Instance.objects.get(name="smol-two")
    assert (two.desired_state, two.command_override) == ("running", world.two.command_override)
    assert not Instance.objects.filter(name="brand-new").exists()
    # An unknown name is still a 404, as for any caller who manages instances.
    assert client.get("/api/v1/instances/nowhere").status_code == 404


def test_an_allow_all_operator_key_still_sees_every_instance(world, api_client, alice):
    alice.is_staff = True
    alice.save()
    _, plain = apikey_create(user=alice, name="all", permissions=MANAGE)
    api_client.credentials(HTTP_X_API_KEY=plain)
    names = [i["name"] for i in api_client.get("/api/v1/instances").json()]
    assert names == ["smol", "smol-two"]


def test_a_key_without_manage_never_reaches_the_instance_routes(world):
    _, plain = apikey_create(
        user=world.key.user,
        name="proxy only",
        permissions=[Permission.PROXY],
        permission_mode="per_instance",
        instances=[world.instance],
    )
    headers = {"Authorization": f"Bearer {plain}"}
    response = httpx.get(f"{world.url}/api/v1/instances/smol/proxy/v1/models", headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_permissions"
