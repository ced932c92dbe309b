"""A local model for gateway and health tests: an instance, served as an upstream of a model.

The agent is not run here: a fake upstream listening on a port stands for the
model server it would have started there (the same command it would run), and
the Instance row says what the agent would have observed (``status``).
"""

from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from django.conf import settings

from accounts.services import apikey_create
from ai.models import AIModel, DesiredState, Instance, InstanceStatus, ModelKind, Upstream
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory

# What the agent would run for this instance: the fake upstream, on the instance's port.
FAKE_COMMAND = "{python} -m fakeupstream --host {host} --port {port}"
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class LocalWorld:
    url: str
    server: object  # the FakeUpstreamThread the instance's port leads to
    instance: Instance
    model: AIModel
    upstream: Upstream
    alice_key: str
    bob_key: str
    charlie_key: str

    def chat(self, key: str | None = None, **body) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key or self.alice_key}"},
            json={"model": self.model.name, "messages": HI, **body},
            timeout=30,
        )


def set_status(instance: Instance, status: str, **fields) -> None:
    """What the agent observes, written as a save (its signal drops the gateway's caches)."""
    instance.status = status
    for name, value in fields.items():
        setattr(instance, name, value)
    instance.save()


def instance_running_on(port: int | None, name: str = "smol", **fields) -> Instance:
    """An instance of the command backend that runs (or is in ``status``) on ``port``
    of this host's node."""
    fields = {"desired_state": DesiredState.RUNNING, "status": InstanceStatus.RUNNING, **fields}
    return Instance.objects.create(
        name=name,
        backend="command",
        command_override=FAKE_COMMAND,
        node=settings.INSTANCE_NODE,
        port=port,
        **fields,
    )


def serve_by_instance(model: AIModel, instance: Instance, **fields) -> Upstream:
    """One more upstream of ``model``: the instance (its address comes from node and port)."""
    fields.setdefault("name", f"{instance.name}-local")
    fields.setdefault("provider_model_id", "")  # sent as model: the name the instance serves
    return UpstreamFactory(model=model, base_url="", instance=instance, **fields)


@pytest.fixture
def local_server():
    """A model server on a port of its own, as the agent would have started it."""
    from fakeupstream import FakeUpstreamThread

    with FakeUpstreamThread() as server:
        yield server


@pytest.fixture
def local(transactional_db, asgi_server, local_server, alice, bob, charlie, acme):
    """Acme's model "smol-chat", served by the running instance "smol"; keys of everyone."""
    instance = instance_running_on(local_server.port)
    model = AIModelFactory(
        name="smol-chat",
        kind=ModelKind.CHAT,
        input_price_per_million=Decimal("2"),
        output_price_per_million=Decimal("8"),
    )
    upstream = serve_by_instance(model, instance)
    ModelLinkFactory(model=model, organisation=acme, is_default=True)
    return LocalWorld(
        url=asgi_server.url,
        server=local_server,
        instance=instance,
        model=model,
        upstream=upstream,
        alice_key=apikey_create(user=alice, name="alice")[1],
        bob_key=apikey_create(user=bob, name="bob")[1],
        charlie_key=apikey_create(user=charlie, name="charlie")[1],
    )
