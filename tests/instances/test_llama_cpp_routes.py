"""/llama-cpp/{name}/...: llama.cpp's own routes of an instance, through the gateway.

The instance is a llama_cpp one whose port leads to the fake upstream, which
answers llama-server's routes in their shapes (``fakeupstream.llamacpp``).
"""

from decimal import Decimal

import httpx
import pytest
from django.contrib.auth.models import Permission as AuthPermission
from django.db import connection

from accounts.models import Permission
from accounts.services import apikey_create
from ai.instances import activity
from ai.models import AIModel, DesiredState, Instance, InstanceStatus, ModelKind, ModelLink
from tests.ai.conftest import clear_of_a_minute_turn, session_client, wait_for_usage
from tests.factories import ModelLinkFactory, UserFactory
from tests.instances import local_world, stand_in_agent
from tests.instances.local_world import serve_by_instance, set_status
from tests.instances.test_on_demand import _starts_it
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

local_server = local_world.local_server
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent


class World:
    def __init__(self, url, server, instance, model, keys):
        self.url, self.server, self.instance, self.model = url, server, instance, model
        self.keys = keys

    def call(self, method, route, who="alice", name="smol", **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {self.keys[who]}"
        return httpx.request(
            method, f"{self.url}/llama-cpp/{name}/{route}", headers=headers, timeout=30, **kwargs
        )

    def served(self, path: str) -> list[dict]:
        return [r for r in self.server.requests() if r["path"] == path]


def llama_instance(port, name="smol", **fields) -> Instance:
    fields = {"desired_state": DesiredState.RUNNING, "status": InstanceStatus.RUNNING, **fields}
    return Instance.objects.create(
        name=name, backend="llama_cpp", model_path="/models/smol.gguf", port=port, **fields
    )


@pytest.fixture
def world(asgi_server, local_server, alice, bob, charlie, acme):
    """The operator's llama.cpp instance "smol", serving acme's model "smol-chat"."""
    instance = llama_instance(local_server.port)
    model = AIModel.objects.create(
        name="smol-chat",
        kind=ModelKind.CHAT,
        input_price_per_million=Decimal("2"),
        output_price_per_million=Decimal("8"),
    )
    serve_by_instance(model, instance)
    ModelLinkFactory(model=model, organisation=acme, priority=4)
    stella = UserFactory(username="stella", is_staff=True)
    keys = {
        name: apikey_create(user=user, name=name, permissions=[Permission.PROXY])[1]
        for name, user in {"alice": alice, "bob": bob, "charlie": charlie, "staff": stella}.items()
    }
    return World(asgi_server.url, local_server, instance, model, keys)


def _error(response) -> dict:
    return response.json()["error"]


# --- Relayed -----------------------------------------------------------------------------


def test_tokenize_is_relayed_and_records_no_usage(world):
    response = world.call("POST", "tokenize", json={"content": "one two three"})

    assert response.status_code == 200
    assert response.json() == {"tokens": [0, 1, 2]}
    (request,) = world.served("/tokenize")
    assert request["json"] == {"content": "one two three"}
    assert activity.in_flight(world.instance.id) == 0


@pytest.mark.parametrize(
    ("method", "route", "path"),
    [
        ("GET", "", "/"),
        ("GET", "props", "/props"),
        ("POST", "props", "/props"),
        ("GET", "slots", "/slots"),
        ("GET", "metrics", "/metrics"),
        ("POST", "detokenize", "/detokenize"),
        ("POST", "apply-template", "/apply-template"),
        ("POST", "reranking", "/reranking"),
    ],
)
def test_every_route_reaches_the_servers_own_path(world, method, route, path):
    kwargs = {"json": {"tokens": [1]}} if method == "POST" else {"params": {"id_slot": "0"}}

    response = world.call(method, route, **kwargs)

    assert response.status_code == 200, response.text
    assert len(world.served(path)) == 1
    if method == "GET" and route in ("props", "slots"):
        assert response.json()["query"] == "id_slot=0"


def test_a_completion_records_the_counts_llama_cpp_reports(world):
    response = world.call("POST", "completion", json={"prompt": "a b c d", "n_predict": 7})

    assert response.status_code == 200
    assert response.json()["tokens_predicted"] == 7
    (event,) = wait_for_usage(1)
    assert event.route == "llama-cpp.completion"
    assert (event.prompt_tokens, event.completion_tokens, event.is_estimated) == (4, 7, False)
    assert (event.status, event.http_status, event.is_stream) == ("ok", 200, False)
    assert event.link_id == ModelLink.objects.get(model=world.model).id
    assert event.model_id == world.model.id
    assert event.cost == Decimal("0.000064")  # 4 * 2 + 7 * 8 per million


def test_a_streamed_completion_is_relayed_and_counted_from_its_last_event(world):
    with httpx.stream(
        "POST",
        f"{world.url}/llama-cpp/smol/completion",
        headers={"Authorization": f"Bearer {world.keys['alice']}"},
        json={"prompt": "a b", "n_predict": 3, "stream": True},
        timeout=30,
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert len(events) == 4
    (event,) = wait_for_usage(1)
    assert (event.is_stream, event.prompt_tokens, event.completion_tokens) == (True, 2, 3)
    assert event.status == "ok" and not event.is_estimated


def test_infill_is_recorded_too(world):
    body = {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 2}
    assert world.call("POST", "infill", json=body).status_code == 200

    (event,) = wait_for_usage(1)
    assert (event.route, event.completion_tokens) == ("llama-cpp.infill", 2)


def test_embeddings_without_counts_are_recorded_as_an_estimate(world):
    response = world.call("POST", "embeddings", json={"content": "some words to embed"})

    assert response.status_code == 200
    (event,) = wait_for_usage(1)
    assert (event.route, event.is_estimated, event.completion_tokens) == (
        "llama-cpp.embeddings",
        True,
        0,
    )
    assert event.prompt_tokens == 5  # about four characters a token


def test_a_session_may_use_the_routes(world, alice):
    response = session_client(alice, world.url).get("/llama-cpp/smol/props")
    assert response.status_code == 200


# --- Who may -----------------------------------------------------------------------------


def test_charlie_gets_the_404_of_an_unknown_name(world):
    outsider = world.call("POST", "tokenize", who="charlie", json={"content": "x"})
    unknown = world.call("POST", "tokenize", name="nope", json={"content": "x"})

    assert outsider.status_code == unknown.status_code == 404
    assert _error(outsider)["code"] == _error(unknown)["code"] == "instance_not_found"
    assert _error(outsider)["message"] == "No instance is named 'smol'."
    assert world.served("/tokenize") == []


def test_no_key_is_a_401_and_a_read_key_a_403(world, alice):
    read_key = apikey_create(user=alice, name="read", permissions=[Permission.READ])[1]
    assert world.call("GET", "props", who=None).status_code == 401
    world.keys["read"] = read_key
    assert world.call("GET", "props", who="read").status_code == 403


def test_a_per_instance_key_uses_only_its_own_instances(world, alice, local_server):
    other = llama_instance(free_port(), name="other")
    _, mine = apikey_create(
        user=alice,
        name="smol only",
        permissions=[Permission.PROXY],
        permission_mode="per_instance",
        instances=[world.instance],
    )
    _, theirs = apikey_create(
        user=alice,
        name="other only",
        permissions=[Permission.PROXY],
        permission_mode="per_instance",
        instances=[other],
    )
    world.keys.update(mine=mine, theirs=theirs)

    allowed = world.call("POST", "tokenize", who="mine", json={"content": "a"})
    refused = world.call("POST", "tokenize", who="theirs", json={"content": "a"})

    assert allowed.status_code == 200
    assert refused.status_code == 403
    assert _error(refused)["code"] == "permission_denied"
    assert len(world.served("/tokenize")) == 1


def test_a_name_no_instance_can_have_is_a_400(world):
    response = world.call("GET", "props", name="Not_A_Name")

    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_name"


def test_staff_may_use_an_instance_without_a_link(world):
    ModelLink.objects.all().delete()

    assert world.call("POST", "tokenize", who="staff", json={"content": "x"}).status_code == 200
    assert world.call("POST", "tokenize", json={"content": "x"}).status_code == 404


def test_an_instance_manager_may_use_it_as_the_instances_api_allows(world, charlie):
    charlie.user_permissions.add(AuthPermission.objects.get(codename="view_instance"))

    assert world.call("GET", "props", who="charlie").status_code == 200
    # A POST changes the server's state: the manager needs change_instance for it.
    assert world.call("POST", "tokenize", who="charlie", json={"content": "x"}).status_code == 404


def test_an_organisations_instance_is_its_members_and_no_one_elses(world, acme):
    ModelLink.objects.all().delete()
    Instance.objects.filter(pk=world.instance.pk).update(organisation=acme)
    world.model.save()  # signal the caches

    assert world.call("POST", "tokenize", who="bob", json={"content": "x"}).status_code == 200
    assert world.call("POST", "tokenize", who="charlie", json={"content": "x"}).status_code == 404


def test_a_key_of_another_organisation_does_not_reach_an_organisations_instance(world, acme, alice):
    from tests.factories import MembershipFactory, OrganisationFactory

    other = OrganisationFactory(name="Other", slug="other")
    MembershipFactory(user=alice, organisation=other)
    Instance.objects.filter(pk=world.instance.pk).update(organisation=acme)
    world.keys["other"] = apikey_create(
        user=alice, name="other", organisation=other, permissions=[Permission.PROXY]
    )[1]

    response = world.call("POST", "tokenize", who="other", json={"content": "x"})

    assert response.status_code == 404


def test_an_instance_of_another_backend_is_a_400(world):
    Instance.objects.filter(pk=world.instance.pk).update(backend="command", command_override="x")
    world.model.save()

    response = world.call("POST", "tokenize", json={"content": "x"})

    assert response.status_code == 400
    assert _error(response)["message"] == "Instance 'smol' is not a llama.cpp server."


def test_a_route_called_with_the_wrong_method_is_a_405(world):
    assert world.call("GET", "completion").status_code == 405
    assert world.call("POST", "slots", json={}).status_code == 405


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_unknown_route_is_the_apis_404(world, method):
    response = world.call(method, "shutdown")

    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


# --- Bad input, limits, faults -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"n_predict": "five"}', "n_predict"),
        (b'{"n_predict": -2}', "n_predict"),
        (b'{"n_predict": true}', "n_predict"),
        (b'{"n_predict": 1.5}', "n_predict"),
    ],
)
def test_a_bad_completion_body_is_a_400_before_the_server(world, body, param):
    response = world.call(
        "POST", "completion", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert _error(response)["param"] == param
    assert world.served("/completion") == []


def test_the_links_limits_apply(world):
    ModelLink.objects.filter(model=world.model).update(requests_per_minute=1)
    world.model.save()
    clear_of_a_minute_turn()

    assert world.call("POST", "completion", json={"prompt": "a"}).status_code == 200
    assert world.call("POST", "completion", json={"prompt": "a"}).status_code == 429
    assert len(wait_for_usage(1)) == 1


def test_a_server_that_does_not_answer_is_a_502_and_recorded(world):
    Instance.objects.filter(pk=world.instance.pk).update(port=free_port())
    world.model.save()

    response = world.call("POST", "completion", json={"prompt": "a"})

    assert response.status_code == 502
    assert _error(response)["code"] == "upstream_error"
    (event,) = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 502)
    assert activity.in_flight(world.instance.id) == 0


def test_a_client_that_leaves_mid_stream_frees_the_instance_and_is_recorded(world):
    with httpx.stream(
        "POST",
        f"{world.url}/llama-cpp/smol/completion",
        headers={"Authorization": f"Bearer {world.keys['alice']}"},
        json={
            "prompt": "a",
            "n_predict": 50,
            "stream": True,
            "fake_upstream": {"chunk_delay_ms": 100},
        },
        timeout=30,
    ) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith("data:")
        assert activity.in_flight(world.instance.id) == 1

    wait_for(lambda: activity.in_flight(world.instance.id) == 0, 10, "the instance freed")
    (event,) = wait_for_usage(1)
    assert event.status == "client_cancelled"


def test_the_instance_is_busy_for_the_scheduler_while_a_call_runs(world, settings):
    settings.INSTANCE_ACTIVITY_INTERVAL = 0.05
    with httpx.stream(
        "POST",
        f"{world.url}/llama-cpp/smol/completion",
        headers={"Authorization": f"Bearer {world.keys['alice']}"},
        json={
            "prompt": "a",
            "n_predict": 20,
            "stream": True,
            "fake_upstream": {"chunk_delay_ms": 50},
        },
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")

        def written():
            instance = Instance.objects.get(pk=world.instance.pk)
            return instance.last_request_at and instance.last_request_priority == 4

        wait_for(written, 10, "the activity write")


# --- Not running -------------------------------------------------------------------------


def test_a_stopped_instance_without_on_demand_start_is_a_503(world, no_agent):
    set_status(world.instance, InstanceStatus.STOPPED)

    response = world.call("POST", "tokenize", json={"content": "x"})

    assert response.status_code == 503
    assert _error(response)["code"] == "instance_not_running"
    assert world.served("/tokenize") == []


def test_a_stopped_instance_with_on_demand_start_is_started_then_called(world, agent):
    set_status(world.instance, InstanceStatus.STOPPED, on_demand_start=True)
    agent.on_demand = _starts_it

    response = world.call("POST", "completion", json={"prompt": "a b"})

    assert response.status_code == 200
    assert [d["name"] for d in agent.demands] == ["smol"]
    (event,) = wait_for_usage(1)
    assert event.status == "ok"


def test_a_start_that_fails_is_a_503_with_the_reason_and_recorded(world, agent):
    set_status(world.instance, InstanceStatus.STOPPED, on_demand_start=True)
    agent.on_demand = lambda name, body: (503, {"reason": "No room.", "retry_after": 9})

    response = world.call("POST", "completion", json={"prompt": "a"})

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "9"
    assert _error(response) == {
        "message": "Instance 'smol' could not be started: No room.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_available",
    }
    (event,) = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 503)
    assert activity.in_flight(world.instance.id) == 0


def test_an_instance_that_serves_no_model_is_recorded_under_its_name(world, settings):
    bare = llama_instance(None, name="bare")
    Instance.objects.filter(pk=bare.pk).update(assigned_port=world.server.port)
    world.model.save()

    response = world.call("POST", "completion", who="staff", name="bare", json={"prompt": "a"})

    assert response.status_code == 200
    (event,) = wait_for_usage(1)
    assert (event.model_id, event.model_name, event.link_id) == (None, "bare", None)
    assert event.cost == 0
    connection.close()
