"""Instance activity: requests in flight per instance, and the rows the writer keeps fresh."""

import httpx
import pytest

from ai.instances import activity
from ai.models import Instance, ModelLink
from tests.ai.conftest import wait_for_usage
from tests.factories import AIModelFactory, ModelLinkFactory
from tests.instances import local_world
from tests.instances.local_world import HI, instance_running_on, serve_by_instance
from tests.servers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server


def _slow_stream(local, key=None):
    return httpx.stream(
        "POST",
        f"{local.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key or local.alice_key}"},
        json={
            "model": "smol-chat",
            "messages": HI,
            "stream": True,
            "fake_upstream": {"chunk_delay_ms": 100},
        },
        timeout=30,
    )


def _row(local) -> Instance:
    return Instance.objects.get(pk=local.instance.pk)


def test_a_stream_is_in_flight_until_it_ends(local):
    with _slow_stream(local) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
        assert activity.in_flight(local.instance.id) == 1
        rest = list(lines)

    assert "data: [DONE]" in rest
    wait_for(lambda: activity.in_flight(local.instance.id) == 0, 10, "the count to drop")
    (event,) = wait_for_usage(1)
    assert event.status == "ok"


def test_a_client_that_leaves_mid_stream_is_no_longer_in_flight(local):
    with _slow_stream(local) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith("data:")
        assert activity.in_flight(local.instance.id) == 1
    # Closed before [DONE]: the client left.

    wait_for(lambda: activity.in_flight(local.instance.id) == 0, 10, "the count to drop")
    (event,) = wait_for_usage(1)
    assert event.status == "client_cancelled"


def test_a_json_request_is_in_flight_only_while_it_runs(local):
    assert local.chat().status_code == 200
    assert activity.in_flight(local.instance.id) == 0
    assert wait_for_usage(1)[0].status == "ok"


def test_the_writer_keeps_last_request_at_fresh_while_a_stream_lasts(local, settings):
    settings.INSTANCE_ACTIVITY_INTERVAL = 0.05
    ModelLink.objects.filter(model=local.model).update(priority=3)
    local.model.save()  # signal the caches
    assert _row(local).last_request_at is None

    with _slow_stream(local) as response:
        lines = response.iter_lines()
        next(lines)
        first = wait_for(lambda: _row(local).last_request_at, 10, "a first write")
        # Written again while the stream goes on, at every interval.
        wait_for(lambda: _row(local).last_request_at > first, 10, "a later write")
        assert _row(local).last_request_priority == 3
        list(lines)


def test_the_highest_priority_in_flight_is_written(local, settings, bob):
    settings.INSTANCE_ACTIVITY_INTERVAL = 0.05
    ModelLink.objects.filter(model=local.model).update(priority=1)
    ModelLinkFactory(model=local.model, user=bob, priority=7)  # bob's own link wins for bob
    local.model.save()

    with (
        _slow_stream(local, key=local.alice_key) as first,
        _slow_stream(local, key=local.bob_key) as second,
    ):
        lines = [first.iter_lines(), second.iter_lines()]
        assert all(next(each).startswith("data:") for each in lines)
        wait_for(lambda: _row(local).last_request_priority == 7, 10, "priority 7 written")


def test_an_instance_without_requests_is_never_written(local, settings):
    settings.INSTANCE_ACTIVITY_INTERVAL = 0.05
    other = instance_running_on(None, name="idle")
    serve_by_instance(AIModelFactory(name="idle-model"), other)
    with _slow_stream(local) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
        wait_for(lambda: _row(local).last_request_at, 10, "a write")

    other.refresh_from_db()
    assert other.last_request_at is None
