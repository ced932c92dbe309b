"""An instance is an upstream: routed to while it runs, refused by name while it does not."""

import httpx
import openai
import pytest
from django.db import connection

from ai.gateway import router
from ai.models import Instance, InstanceStatus, ModelLink, Upstream
from ai.selectors import registry_load
from tests.ai.conftest import clear_of_a_minute_turn, session_client, wait_for_usage
from tests.factories import AIModelFactory, UpstreamFactory
from tests.instances import local_world
from tests.instances.local_world import (
    HI,
    instance_running_on,
    serve_by_instance,
    set_status,
)
from tests.servers import start_gateway, wait_for, wait_until_serving

pytestmark = pytest.mark.django_db(transaction=True)

# The local world's fixtures, as fixtures here.
local, local_server = local_world.local, local_world.local_server

REFUSED = "http://127.0.0.1:1/v1"  # nothing listens on port 1
NOT_RUNNING = [
    InstanceStatus.STOPPED,
    InstanceStatus.STARTING,
    InstanceStatus.RESTARTING,
    InstanceStatus.FAILED,
]


def _sdk(local, key=None):
    return openai.OpenAI(base_url=f"{local.url}/v1", api_key=key or local.alice_key, max_retries=0)


def _served_requests(server) -> list[dict]:
    return [r for r in server.requests() if r["path"] == "/v1/chat/completions"]


# --- Served while it runs ------------------------------------------------------------------


def test_it_serves_a_chat_completion_through_a_running_instance(local):
    completion = _sdk(local).chat.completions.create(model="smol-chat", messages=HI)

    assert completion.model == "smol-chat"
    assert completion.choices[0].message.content.startswith("tok0 ")
    # The instance's server got it, asked for the name it serves (the instance's).
    (request,) = _served_requests(local.server)
    assert request["json"]["model"] == "smol"
    (event,) = wait_for_usage(1)
    assert event.upstream_id == local.upstream.id and event.model_name == "smol-chat"
    assert (event.status, event.is_stream, event.attempts) == ("ok", False, 1)
    assert event.prompt_tokens > 0 and event.completion_tokens == 20
    assert event.cost > 0  # the model's prices apply to a local model too


def test_it_streams_through_a_running_instance(local):
    stream = _sdk(local).chat.completions.create(
        model="smol-chat",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("tok0 tok1 ")
    assert chunks[-1].usage.completion_tokens == 20
    (event,) = wait_for_usage(1)
    assert event.upstream_id == local.upstream.id
    assert (event.status, event.is_stream, event.completion_tokens) == ("ok", True, 20)


def test_the_answer_names_the_instances_upstream(local):
    response = local.chat()
    assert response.status_code == 200
    assert response.headers["x-switchboard-upstream"] == "smol-local"
    assert response.json()["x_switchboard"]["model_identifier"] == "smol"


# --- Refused while it does not run ---------------------------------------------------------


@pytest.mark.parametrize("status", NOT_RUNNING)
def test_a_model_whose_instance_does_not_run_is_a_503_naming_it(local, status):
    set_status(local.instance, status)

    response = local.chat()

    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "message": f"Instance 'smol' is {status}.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_available",
        }
    }
    assert _served_requests(local.server) == []
    assert not router.breaker.is_open(local.upstream.id)  # not a failure of the upstream


def test_a_stream_of_a_stopped_instance_is_a_503_before_any_event(local):
    set_status(local.instance, InstanceStatus.STOPPED)

    with pytest.raises(openai.APIStatusError) as raised:
        _sdk(local).chat.completions.create(model="smol-chat", messages=HI, stream=True)

    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "model_not_available"
    assert raised.value.body["message"] == "Instance 'smol' is stopped."


def test_the_panel_chat_says_which_instance_is_stopped(local, alice):
    set_status(local.instance, InstanceStatus.STOPPED)

    response = session_client(alice, local.url).post(
        "/api/ai/chat", json={"message": "Hi", "modelId": local.model.id}
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_available"
    assert response.json()["error"]["message"] == "Instance 'smol' is stopped."


def test_a_running_instance_without_a_port_yet_is_not_routed_to(local):
    set_status(local.instance, InstanceStatus.RUNNING, port=None)

    response = local.chat()

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "Instance 'smol' has no port yet."


def test_it_serves_again_once_the_instance_runs_again(local):
    set_status(local.instance, InstanceStatus.STOPPED)
    assert local.chat().status_code == 503
    set_status(local.instance, InstanceStatus.RUNNING)
    assert local.chat().status_code == 200


def test_no_usage_and_no_limit_is_spent_on_a_stopped_instance(local):
    ModelLink.objects.filter(model=local.model).update(requests_per_minute=1)
    set_status(local.instance, InstanceStatus.STOPPED)
    assert local.chat().status_code == 503
    assert local.chat().status_code == 503
    set_status(local.instance, InstanceStatus.RUNNING)

    assert local.chat().status_code == 200
    events = wait_for_usage(1)
    assert len(events) == 1 and events[0].status == "ok"  # the 503s left no event


# --- Failover, both ways -------------------------------------------------------------------


def test_a_cloud_upstream_serves_while_the_local_instance_is_stopped(local, fake_upstream):
    cloud = UpstreamFactory(
        model=local.model, name="cloud", base_url=fake_upstream.base_url(), priority=1
    )
    fake_upstream.clear()

    assert local.chat().headers["x-switchboard-upstream"] == "smol-local"
    set_status(local.instance, InstanceStatus.STOPPED)
    stopped = local.chat()

    assert stopped.status_code == 200
    assert stopped.headers["x-switchboard-upstream"] == "cloud"
    local_event, cloud_event = wait_for_usage(2)
    assert (local_event.upstream_id, cloud_event.upstream_id) == (local.upstream.id, cloud.id)
    # The stopped instance was not tried: one attempt, nothing sent to its port.
    assert cloud_event.attempts == 1
    assert len(_served_requests(local.server)) == 1
    assert len(_served_requests(fake_upstream)) == 1


def test_a_local_instance_serves_when_the_cloud_primary_is_down(local, fake_upstream):
    Upstream.objects.filter(pk=local.upstream.pk).update(priority=1)
    cloud = UpstreamFactory(model=local.model, name="cloud", base_url=REFUSED, priority=0)

    completion = _sdk(local).chat.completions.create(model="smol-chat", messages=HI)
    stream = _sdk(local).chat.completions.create(model="smol-chat", messages=HI, stream=True)
    chunks = list(stream)

    assert completion.choices[0].message.content.startswith("tok0")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    events = wait_for_usage(2)
    assert {e.upstream_id for e in events} == {local.upstream.id}
    assert all(e.attempts == 2 and e.status == "ok" for e in events)
    assert cloud.id not in {e.upstream_id for e in events}


def test_both_down_is_the_usual_502(local):
    UpstreamFactory(model=local.model, name="cloud", base_url=REFUSED, priority=1)
    set_status(local.instance, InstanceStatus.STOPPED)

    response = local.chat()

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


# --- Links, limits, tenancy, durability ----------------------------------------------------


def test_a_link_limit_applies_to_a_local_model(local):
    ModelLink.objects.filter(model=local.model).update(requests_per_minute=2)
    local.model.save()  # signal the caches
    clear_of_a_minute_turn()

    statuses = [local.chat(key=local.bob_key).status_code for _ in range(3)]

    assert statuses == [200, 200, 429]
    events = wait_for_usage(2)
    assert [e.upstream_id for e in events] == [local.upstream.id] * 2


def test_charlie_cannot_use_acmes_local_model(local):
    response = local.chat(key=local.charlie_key)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert _served_requests(local.server) == []


def test_charlie_does_not_learn_whether_the_instance_runs(local):
    set_status(local.instance, InstanceStatus.STOPPED)

    response = local.chat(key=local.charlie_key)

    assert response.status_code == 404
    assert "Instance" not in response.text and "stopped" not in response.text


def test_usage_is_recorded_when_the_instance_is_deleted_mid_stream(local):
    model_id, upstream_id = local.model.id, local.upstream.id
    with httpx.stream(
        "POST",
        f"{local.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {local.bob_key}"},
        json={
            "model": "smol-chat",
            "messages": HI,
            "stream": True,
            "fake_upstream": {"chunk_delay_ms": 20},
        },
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
        # The instance goes, and its upstream with it (cascade), mid-stream.
        Instance.objects.filter(pk=local.instance.pk).delete()
        rest = list(lines)

    assert "data: [DONE]" in rest
    assert not Upstream.objects.filter(pk=upstream_id).exists()
    (event,) = wait_for_usage(1)
    assert (event.model_id, event.upstream_id) == (model_id, upstream_id)
    assert event.completion_tokens == 20 and event.status == "ok"


def test_a_model_left_without_its_instance_has_no_upstream(local):
    Instance.objects.filter(pk=local.instance.pk).delete()

    response = local.chat()

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "Model 'smol-chat' has no enabled upstream."


# --- The snapshot --------------------------------------------------------------------------


def test_the_registry_loads_instance_upstreams_in_its_three_queries(
    transactional_db, django_assert_num_queries, settings
):
    for i in range(3):
        model = AIModelFactory(name=f"local-{i}")
        serve_by_instance(model, instance_running_on(30000 + i, name=f"inst-{i}"))
        UpstreamFactory(model=model, name="cloud", priority=1)

    with django_assert_num_queries(3):  # the nodes, the models, their upstreams
        registry = registry_load()

    upstream = registry.by_name["local-1"].upstreams[0]
    assert upstream.base_url == f"http://{settings.INSTANCE_HOST}:30001/v1"
    assert (upstream.instance_name, upstream.instance_status) == ("inst-1", "running")
    assert upstream.upstream_model_id == "inst-1" and upstream.is_routable


def test_an_ipv6_instance_address_is_bracketed(transactional_db, settings):
    settings.INSTANCE_HOST = "::1"
    serve_by_instance(AIModelFactory(name="v6"), instance_running_on(30010))

    (upstream,) = registry_load().by_name["v6"].upstreams

    assert upstream.base_url == "http://[::1]:30010/v1"


def test_a_provider_model_id_overrides_the_served_name(transactional_db):
    model = AIModelFactory(name="named")
    serve_by_instance(model, instance_running_on(30020), provider_model_id="other-name")

    (upstream,) = registry_load().by_name["named"].upstreams

    assert upstream.upstream_model_id == "other-name"


def test_a_stopped_instance_stays_in_the_snapshot_but_not_among_the_routable(transactional_db):
    model = AIModelFactory(name="half")
    serve_by_instance(model, instance_running_on(30030, status=InstanceStatus.STOPPED))
    cloud = UpstreamFactory(model=model, name="cloud", priority=1)

    info = registry_load().by_name["half"]

    assert [u.name for u in info.upstreams] == ["smol-local", "cloud"]
    assert [u.id for u in info.routable] == [cloud.id]
    assert info.upstreams[0].health_status == "unhealthy"


# --- Another process: the agent's change seen by a gateway without Redis -------------------


def test_a_gateway_process_sees_an_instance_stop_and_start_made_by_another(local, settings):
    """The agent is another process; without Redis the generation is a file they share."""
    settings.REDIS_URL = ""  # this process too, when the suite runs with Redis
    url, process = start_gateway(None)
    try:
        wait_until_serving(f"{url}/healthz")
        local.url = url
        assert local.chat().status_code == 200  # its registry is cached now

        set_status(local.instance, InstanceStatus.STOPPED)  # this process stands for the agent
        # Far sooner than the cache's maximum age (60 s) would allow without the file.
        wait_for(lambda: local.chat().status_code == 503, 15, "the gateway to see the stop")

        set_status(local.instance, InstanceStatus.RUNNING)
        wait_for(lambda: local.chat().status_code == 200, 15, "the gateway to see the start")
    finally:
        process.terminate()
        process.wait(timeout=10)
    connection.close()
