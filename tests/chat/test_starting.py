"""The chat page while the model's instance starts on demand: words, not a silent wait."""

import asyncio

import pytest

from ai.consumers import STARTING
from ai.instances import activity
from ai.instances.client import close_async_client
from ai.models import InstanceStatus, UsageEvent
from tests.chat.test_consumer import _connect, _until
from tests.instances import local_world, stand_in_agent
from tests.instances.local_world import set_status
from tests.instances.test_on_demand import FULL, _starts_it

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent


@pytest.fixture(autouse=True)
async def close_agent_client():
    """Each async test runs its own loop: close the agents' client and the writer on it."""
    yield
    await close_async_client()
    await activity.shutdown()


@pytest.fixture
def stopped(local, agent):
    set_status(local.instance, InstanceStatus.STOPPED, on_demand_start=True)
    agent.on_demand = _starts_it
    local.agent = agent
    return local


async def test_it_says_the_model_is_starting_before_the_reply(stopped, alice):
    communicator, connected, _ = await _connect(alice)
    assert connected
    await communicator.send_json_to(
        {"type": "send", "model_id": stopped.model.id, "content": "Hello"}
    )

    done, seen = await _until(communicator, "done")

    kinds = [m["type"] for m in seen]
    assert kinds[:2] == ["started", "status"]
    assert seen[1] == {"type": "status", "status": "starting", "message": STARTING}
    assert kinds.index("status") < kinds.index("delta")
    assert done["status"] == "complete"
    assert len(stopped.agent.demands) == 1
    await communicator.disconnect()


async def test_a_running_model_gets_no_status_message(local, alice):
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to({"type": "send", "model_id": local.model.id, "content": "Hi"})

    _, seen = await _until(communicator, "done")

    assert "status" not in [m["type"] for m in seen]
    await communicator.disconnect()


async def test_a_start_that_fails_ends_the_reply_with_an_error(stopped, alice):
    stopped.agent.on_demand = lambda name, body: (503, {"reason": FULL})
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to(
        {"type": "send", "model_id": stopped.model.id, "content": "Hello"}
    )

    done, seen = await _until(communicator, "done")

    assert "status" in [m["type"] for m in seen]
    assert done["status"] == "error"
    assert done["error"] == "The model is unavailable right now. Please try again in a moment."
    await communicator.disconnect()
    assert await _events("upstream_error") == 1


async def test_stop_while_the_model_starts_records_a_cancelled_request(stopped, alice):
    stopped.agent.release.clear()
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to(
        {"type": "send", "model_id": stopped.model.id, "content": "Hello"}
    )
    await _until(communicator, "status")

    await communicator.send_json_to({"type": "stop"})
    done, _ = await _until(communicator, "done")

    assert done["status"] == "stopped"
    assert await _events("client_cancelled") == 1
    stopped.agent.release.set()
    await communicator.disconnect()


async def _events(status: str) -> int:
    """The usage events of that status, once written (off the request path)."""
    for _ in range(100):
        if count := await UsageEvent.objects.filter(status=status).acount():
            return count
        await asyncio.sleep(0.05)
    return 0
