"""Two nodes on one machine: two real agents (different ports, node names and port ranges),
an instance on each, one model served by both, reached through the gateway and the API."""

import httpx
from django.conf import settings

from accounts.models import Permission
from accounts.services import apikey_create
from ai.models import AIModel, ModelLink, Upstream
from tests.factories import UserFactory
from tests.servers import wait_for
from tests.workers import port_range, worker_port

from .conftest import FAKE_UPSTREAM, command_instance, wait_status

HI = [{"role": "user", "content": "Hi"}]
SECOND_PORTS = range(worker_port(22000), worker_port(23000))


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "twin-chat", "messages": HI},
        timeout=30,
    )


def answered_by(url: str, key: str, count: int) -> list[str]:
    """Which upstream answered each of ``count`` chats (all must succeed)."""
    names = []
    for _ in range(count):
        reply = chat(url, key)
        assert reply.status_code == 200, reply.text
        names.append(reply.headers["x-switchboard-upstream"])
    return names


def port_of(instance) -> int:
    return instance.assigned_port if instance.assigned_port is not None else instance.port


def test_one_model_is_served_from_instances_on_two_nodes_until_one_agent_stops(
    agent_factory, asgi_server
):
    first = agent_factory().start()
    second = agent_factory(node="second", INSTANCE_PORT_RANGE=port_range(22000)).start()
    assert second.health()["node"] == "second" and first.health()["node"] == "local"

    staff = UserFactory(username="stella", is_staff=True)
    chat_key = apikey_create(user=staff, name="sdk", permissions=[Permission.PROXY])[1]
    manage_key = apikey_create(user=staff, name="ops", permissions=[Permission.MANAGE])[1]
    model = AIModel.objects.create(name="twin-chat")
    ModelLink.objects.create(model=model, user=staff)
    here = command_instance("here", node=settings.INSTANCE_NODE)
    there = command_instance(
        "there", f"sh -c 'echo serving on second; exec {FAKE_UPSTREAM}'", node="second"
    )
    for instance in (here, there):
        Upstream.objects.create(
            model=model, name=f"on-{instance.name}", instance=instance, base_url=""
        )

    here, there = wait_status(here, "running"), wait_status(there, "running")
    assert port_of(there) in SECOND_PORTS and port_of(here) not in SECOND_PORTS
    assert first.health()["instances"] == {"here": "running"}
    assert second.health()["instances"] == {"there": "running"}

    # The gateway reaches both, each at its node's host and its port.
    seen = set()
    wait_for(
        lambda: seen.update(answered_by(asgi_server.url, chat_key, 4)) or len(seen) == 2,
        60,
        "answers from both nodes",
    )
    assert seen == {"on-here", "on-there"}

    # The second node's log comes from the second node's agent, through the API.
    api = httpx.Client(base_url=asgi_server.url, headers={"Authorization": f"Bearer {manage_key}"})
    logs = api.get("/api/v1/instances/there/logs")
    assert logs.status_code == 200 and "serving on second" in logs.text
    assert api.get("/api/v1/nodes").json() == {
        "local": {"address": first.url},
        "second": {"address": second.url},
    }

    # The second agent stops (and its instance with it): the API says so, the model
    # is served by the first node alone.
    assert second.terminate() == 0
    wait_status(there, "stopped")
    for reply in (
        api.get("/api/v1/instances/there/logs"),
        api.post("/api/v1/instances/there/restart"),
    ):
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "agent_unavailable" and "node 'second'" in error["message"]
    assert api.get("/api/v1/instances/here/logs").status_code == 200
    wait_for(
        lambda: set(answered_by(asgi_server.url, chat_key, 6)) == {"on-here"},
        30,
        "the first node alone to answer",
    )
