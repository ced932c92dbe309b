"""The real agent and the gateway together: what the agent observes reaches the gateway.

The agent writes its observations without model signals (``update()``); these tests
make no other write after the gateway has cached the model, so only the agent's own
cache bump can tell the gateway that the instance runs or stopped.
"""

import os
import signal

import httpx
from django.conf import settings

from accounts.models import Permission
from accounts.services import apikey_create
from ai.models import AIModel, Instance, ModelLink, Upstream
from tests.factories import UserFactory
from tests.servers import wait_for

from .conftest import FAKE_UPSTREAM, wait_status

HI = [{"role": "user", "content": "Hi"}]


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "local-chat", "messages": HI},
        timeout=30,
    )


def test_the_gateway_serves_an_instance_once_the_agent_reports_it_running_and_stops_after(
    agent, asgi_server
):
    alice = UserFactory(username="alice")
    key = apikey_create(user=alice, name="sdk", permissions=[Permission.PROXY])[1]
    model = AIModel.objects.create(name="local-chat")
    ModelLink.objects.create(model=model, user=alice)
    # Asked to run, and never asked anything again: a slow start keeps it `starting`.
    instance = Instance.objects.create(
        name="smol",
        backend="command",
        command_override=f"sh -c 'sleep 1; exec {FAKE_UPSTREAM}'",
        node=settings.INSTANCE_NODE,
        desired_state="running",
    )
    Upstream.objects.create(model=model, name="smol", instance=instance, base_url="")

    refused = chat(asgi_server.url, key)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "model_not_available"

    instance = wait_status(instance, "running")
    served = wait_for(
        lambda: (r := chat(asgi_server.url, key)).status_code == 200 and r, 10, "a served chat"
    )
    assert served.headers["x-switchboard-upstream"] == "smol"

    # The process dies outside the agent's control, and it may not restart it.
    Instance.objects.filter(pk=instance.pk).update(auto_restart=False)
    os.killpg(instance.pid, signal.SIGKILL)
    wait_status(instance, "failed")
    refused = wait_for(
        lambda: (r := chat(asgi_server.url, key)).status_code == 503 and r, 10, "a refused chat"
    )
    assert "Instance 'smol' is failed." in refused.json()["error"]["message"]
