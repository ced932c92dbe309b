"""Nodes: rows that say where each agent answers and with which key; the API and admin pages.

The agent here is the stand-in (its HTTP protocol only); tests/instances/test_two_nodes.py
runs two real agents.
"""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse

from accounts.services import apikey_create
from ai.instances import client, services
from ai.instances.client import agent_endpoint, agent_endpoint_async, instance_base_url
from ai.models import Instance, Node
from panel.errors import AgentUnavailable
from tests.api import conftest as management
from tests.api.conftest import MANAGE, as_key
from tests.instances import stand_in_agent
from tests.instances.stand_in_agent import StandInAgent

api, keys, manager, staff = management.api, management.keys, management.manager, management.staff
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent

NODE_KEY = "node-key-never-shown-7d1e"
FAKE_COMMAND = "{python} -m fakeupstream --host {host} --port {port}"
PERSONAS = ["anonymous", "charlie", "bob", "alice", "manager", "staff"]


def add_node(name="gpu-1", address="http://10.0.0.5:9201", **fields) -> Node:
    fields = {"api_key": NODE_KEY, "instance_host": "10.0.0.5", **fields}
    return Node.objects.create(name=name, address=address, **fields)


def command_options(**options) -> dict:
    return {"backend": "command", "command_override": FAKE_COMMAND, **options}


def stored_key(node: Node) -> str:
    """The key column as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM ai_node WHERE id = %s", [node.pk])
        return cursor.fetchone()[0]


# --- Where an agent is -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_local_node_gets_its_row_from_the_settings_when_first_needed(settings):
    settings.INSTANCE_HOST = "127.0.0.9"
    assert not Node.objects.exists()

    url, key = agent_endpoint(settings.INSTANCE_NODE)

    node = Node.objects.get()
    assert (node.name, node.address, node.instance_host) == (
        settings.INSTANCE_NODE,
        settings.INSTANCE_AGENT_URL,
        "127.0.0.9",
    )
    assert (url, key) == (settings.INSTANCE_AGENT_URL, settings.INSTANCE_AGENT_KEY)
    assert node.api_key == settings.INSTANCE_AGENT_KEY
    assert settings.INSTANCE_AGENT_KEY not in stored_key(node)  # encrypted at rest


@pytest.mark.django_db
def test_a_node_row_answers_for_its_agent_and_its_instances(settings):
    add_node(address="http://10.0.0.5:9201/")
    assert agent_endpoint("gpu-1") == ("http://10.0.0.5:9201", NODE_KEY)
    on_gpu = Instance(name="big", node="gpu-1", assigned_port=8300)
    assert instance_base_url(on_gpu) == "http://10.0.0.5:8300/v1"
    # An existing local row wins over the settings it was made from.
    add_node(settings.INSTANCE_NODE, "http://10.0.0.1:9201", instance_host="10.0.0.1")
    assert agent_endpoint(settings.INSTANCE_NODE) == ("http://10.0.0.1:9201", NODE_KEY)
    local = Instance(name="small", node=settings.INSTANCE_NODE, port=8201)
    assert instance_base_url(local) == "http://10.0.0.1:8201/v1"


@pytest.mark.django_db
def test_an_unknown_node_has_no_agent_and_its_instances_no_address():
    with pytest.raises(AgentUnavailable) as caught:
        agent_endpoint("nowhere")
    assert "No node is named 'nowhere'" in caught.value.message
    assert caught.value.status_code == 503
    assert client.agent_nudge("nowhere") is False
    with pytest.raises(AgentUnavailable):
        client.agent_logs("nowhere", "x", 10)
    assert instance_base_url(Instance(name="x", node="nowhere", port=8300)) is None
    assert not Node.objects.exists()  # only this host's node is made on demand
    # A row written past the admin's checks, with an address no client can use.
    add_node("broken", "http://[::1:9201")
    assert client.agent_nudge("broken") is False
    with pytest.raises(AgentUnavailable, match="node 'broken' is not answering"):
        client.agent_health("broken")


@pytest.mark.django_db(transaction=True)
async def test_the_async_endpoint_is_cached_until_a_node_row_changes(settings):
    from asgiref.sync import sync_to_async

    node = await sync_to_async(add_node)()
    assert await agent_endpoint_async("gpu-1") == ("http://10.0.0.5:9201", NODE_KEY)

    # A write without a signal is not seen: the answer comes from this process's cache.
    await sync_to_async(Node.objects.filter(pk=node.pk).update)(address="http://10.0.0.6:9201")
    assert await agent_endpoint_async("gpu-1") == ("http://10.0.0.5:9201", NODE_KEY)

    # A save bumps the generation, as any admin or API write does.
    node.address = "http://10.0.0.7:9201"
    await sync_to_async(node.save)()
    assert await agent_endpoint_async("gpu-1") == ("http://10.0.0.7:9201", NODE_KEY)

    with pytest.raises(AgentUnavailable, match="No node is named 'nowhere'"):
        await agent_endpoint_async("nowhere")
    # This host's node is answered from the settings without writing its row.
    local = await agent_endpoint_async(settings.INSTANCE_NODE)
    assert local == (settings.INSTANCE_AGENT_URL, settings.INSTANCE_AGENT_KEY)
    assert await sync_to_async(Node.objects.filter(name=settings.INSTANCE_NODE).exists)() is False


@pytest.mark.django_db(transaction=True)
def test_calls_to_an_agent_carry_its_node_s_key(settings):
    with StandInAgent(key=NODE_KEY, node="gpu-1") as gpu:
        add_node(address=gpu.url)
        gpu.logs["big"] = "one\ntwo\n"
        assert client.agent_nudge("gpu-1") is True
        assert client.agent_health("gpu-1")["node"] == "gpu-1"
        assert client.agent_logs("gpu-1", "big", 1) == "two\n"
        # The deployment's own key is not that node's key.
        Node.objects.filter(name="gpu-1").update(api_key=settings.INSTANCE_AGENT_KEY)
        assert client.agent_nudge("gpu-1") is False
        with pytest.raises(AgentUnavailable, match="refused the node's key"):
            client.agent_health("gpu-1")
    assert gpu.nudges == 1 and gpu.refused == 2


# --- Placing instances ----------------------------------------------------------------------


@pytest.mark.django_db
def test_an_instance_may_only_be_placed_on_a_node_that_exists(settings):
    with pytest.raises(ValidationError) as caught:
        services.instance_create(name="x", options=command_options(node="gpu-1"), start=False)
    assert "No node is named 'gpu-1'" in caught.value.message_dict["node"][0]
    assert not Instance.objects.exists()

    add_node()
    placed = services.instance_create(name="x", options=command_options(node="gpu-1"))
    assert placed.node == "gpu-1"
    with pytest.raises(ValidationError):
        services.instance_update(instance=placed, options={"node": "gpu-2"})
    assert Instance.objects.get().node == "gpu-1"
    # This host's node needs no setup: its row is made then.
    local = services.instance_create(name="y", options=command_options(), start=False)
    assert local.node == settings.INSTANCE_NODE
    assert Node.objects.filter(name=settings.INSTANCE_NODE).exists()


@pytest.fixture
def staff_api(api, staff):
    return as_key(api, apikey_create(user=staff, name="m", permissions=MANAGE)[1])


@pytest.mark.django_db
def test_the_api_refuses_an_instance_on_an_unknown_node_with_a_400(staff_api):
    body = {"backend_type": "command", "command_override": FAKE_COMMAND, "node": "gpu-9"}
    response = staff_api.post("/api/v1/instances/x", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "node" and "No node is named 'gpu-9'" in error["message"]
    assert not Instance.objects.exists()


@pytest.mark.django_db
def test_the_admin_form_refuses_an_unknown_node(client, superuser):
    client.force_login(superuser)
    form = {
        "name": "x",
        "backend": "command",
        "command_override": FAKE_COMMAND,
        "node": "gpu-9",
        "extra_args": "[]",
        "environment": "{}",
        "max_restarts": 3,
        "restart_delay": 5,
        "ready_timeout": 300,
    }
    response = client.post(reverse("admin:ai_instance_add"), form)
    assert response.status_code == 200
    assert "No node is named" in response.content.decode()
    assert not Instance.objects.exists()


# --- GET /api/v1/nodes ----------------------------------------------------------------------


@pytest.mark.django_db
def test_it_lists_nodes_by_name_with_their_address_and_never_a_key(staff_api, settings):
    add_node()
    add_node("gpu-2", "http://agent:secret-in-url@10.0.0.6:9201", instance_host="10.0.0.6")

    response = staff_api.get("/api/v1/nodes")

    assert response.status_code == 200
    assert response.json() == {
        "gpu-1": {"address": "http://10.0.0.5:9201"},
        "gpu-2": {"address": "http://10.0.0.6:9201"},
        # This host's node, even before anything made its row.
        settings.INSTANCE_NODE: {"address": settings.INSTANCE_AGENT_URL},
    }
    detail = staff_api.get("/api/v1/nodes/gpu-1")
    assert detail.json() == {"address": "http://10.0.0.5:9201"}
    for text in (response.content, detail.content):
        for secret in (NODE_KEY, settings.INSTANCE_AGENT_KEY, "secret-in-url"):
            assert secret.encode() not in text


@pytest.mark.django_db
def test_it_answers_404_for_an_unknown_node_and_400_for_a_bad_name(staff_api):
    missing = staff_api.get("/api/v1/nodes/gpu-9")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "No node is named 'gpu-9'."
    bad = staff_api.get("/api/v1/nodes/Not_A_Name")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_name"


@pytest.mark.parametrize("route", ["/api/v1/nodes", "/api/v1/nodes/gpu-1"])
@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.django_db
def test_only_staff_and_model_managers_see_nodes(api, keys, persona, route):
    add_node()
    response = as_key(api, keys.get(persona)).get(route)
    expected = {"anonymous": 401, "charlie": 403, "bob": 403, "alice": 403}.get(persona, 200)
    assert response.status_code == expected, response.content
    if expected != 200:
        assert "10.0.0.5" not in response.content.decode()
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.django_db
def test_it_refuses_to_write_nodes_through_the_api(staff_api):
    response = staff_api.post("/api/v1/nodes/gpu-1", {"address": "http://x:1"}, format="json")
    assert response.status_code == 405
    assert not Node.objects.exists()


# --- The admin's Nodes page -----------------------------------------------------------------


def node_url(view, *args):
    return reverse(f"admin:ai_node_{view}", args=args)


def node_form(**fields):
    return {
        "name": "gpu-1",
        "address": "http://10.0.0.5:9201",
        "api_key": NODE_KEY,
        "instance_host": "10.0.0.5",
        "port_range": "",
        "max_running_instances": "",
        **fields,
    }


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


@pytest.mark.django_db
def test_the_admin_adds_a_node_and_never_shows_its_key(admin_client):
    added = admin_client.post(node_url("add"), node_form(port_range="9000-9099"))
    assert added.status_code == 302, added.content.decode()[:3000]
    node = Node.objects.get()
    assert (node.api_key, node.port_range) == (NODE_KEY, "9000-9099")
    assert NODE_KEY not in stored_key(node)

    for page in (node_url("changelist"), node_url("change", node.pk), node_url("history", node.pk)):
        html = admin_client.get(page).content.decode()
        assert NODE_KEY not in html
    change = admin_client.get(node_url("change", node.pk)).content.decode()
    assert "key set" in change and 'type="password"' in change


@pytest.mark.django_db
def test_an_empty_key_field_keeps_the_stored_key_and_a_new_one_replaces_it(admin_client):
    node = add_node()
    changed = node_form(api_key="", address="http://agent-2:9201")  # a service name will do
    kept = admin_client.post(node_url("change", node.pk), changed)
    assert kept.status_code == 302
    node.refresh_from_db()
    assert (node.address, node.api_key) == ("http://agent-2:9201", NODE_KEY)
    admin_client.post(node_url("change", node.pk), node_form(api_key="a-new-key"))
    node.refresh_from_db()
    assert node.api_key == "a-new-key"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_key": ""}, "refuses every call without its key"),
        ({"port_range": "9000:9100"}, "first-last"),
        ({"port_range": "9100-9000"}, "the first not above the last"),
        ({"port_range": "80-90"}, "Use ports from 1024"),
        ({"port_range": "a-b"}, "first-last"),
        ({"address": "http://user:pw@10.0.0.5:9201"}, "Leave the user and password out"),
        ({"address": "ftp://10.0.0.5"}, "the agent's base URL"),
        ({"address": "http://10.0.0.5:port"}, "the agent's base URL"),
        ({"address": "http://10.0.0.5:9201/?key=x"}, "no query"),
        ({"name": "Not_A_Name"}, "lower-case letters"),
    ],
)
@pytest.mark.django_db
def test_the_admin_refuses_a_bad_node(admin_client, fields, message):
    response = admin_client.post(node_url("add"), node_form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode().replace("&quot;", '"').replace("&#x27;", "'")
    assert not Node.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_check_agent_action_says_whether_each_agent_answers(admin_client):
    with StandInAgent(key=NODE_KEY, node="gpu-1") as gpu, StandInAgent(key="other") as wrong:
        good = add_node(address=gpu.url)
        mislabelled = add_node("gpu-2", gpu.url)
        refused = add_node("gpu-3", wrong.url)
        down = add_node("gpu-4", "http://127.0.0.1:9")
        response = admin_client.post(
            node_url("changelist"),
            {
                "action": "check_agent",
                "_selected_action": [good.pk, mislabelled.pk, refused.pk, down.pk],
            },
            follow=True,
        )
    html = response.content.decode().replace("&#x27;", "'")
    assert "Node gpu-1: the agent answers (pid 4242, 0 instance(s))." in html
    assert "Node gpu-2: the agent at this address serves node 'gpu-1'" in html
    assert "Node gpu-3: The instance agent of node 'gpu-3' refused the node's key" in html
    assert "Node gpu-4: The instance agent of node 'gpu-4' is not answering" in html
    assert NODE_KEY not in html


@pytest.mark.django_db
def test_a_node_with_instances_cannot_be_deleted(admin_client):
    node = add_node()
    services.instance_create(name="big", options=command_options(node="gpu-1"), start=False)
    page = admin_client.get(node_url("delete", node.pk)).content.decode()
    assert "Instance: big (on node gpu-1)" in page
    admin_client.post(node_url("delete", node.pk), {"post": "yes"})
    assert Node.objects.filter(pk=node.pk).exists()
    Instance.objects.all().delete()
    admin_client.post(node_url("delete", node.pk), {"post": "yes"})
    assert not Node.objects.filter(pk=node.pk).exists()
