"""/api/v1/instances (seed 003): shapes, permissions, bad input, the agent's answers, the proxy."""

import json

import httpx
import pytest
from django.utils import timezone
from openai import OpenAI

from accounts.models import Permission
from accounts.services import apikey_create
from ai.instances import services
from ai.models import AIModel, DesiredState, Instance, InstanceStatus, Upstream
from tests.api import conftest as management
from tests.api.conftest import MANAGE, as_key
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory
from tests.instances import stand_in_agent

# The management API's personas and keys, and the stand-in agent, as fixtures here.
api, keys, manager, staff = management.api, management.keys, management.manager, management.staff
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent

FAKE_COMMAND = "{python} -m fakeupstream --host {host} --port {port}"
SECRET = "sk-instance-secret-never-shown"
PERSONAS = ["anonymous", "charlie", "bob", "alice", "manager", "staff"]


def create(name="x", start=False, **options):
    options = {"backend": "command", "command_override": FAKE_COMMAND, **options}
    return services.instance_create(name=name, options=options, start=start)


def body(**extra):
    return {"backend_type": "command", "command_override": FAKE_COMMAND, **extra}


@pytest.fixture
def staff_api(api, staff):
    """Stella's manage key (no model_manager group: a transactional test's flush drops it)."""
    return as_key(api, apikey_create(user=staff, name="stella-manage", permissions=MANAGE)[1])


def error_of(response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- Shapes and state -----------------------------------------------------------------------


@pytest.mark.django_db
def test_it_creates_and_starts_an_instance_in_seed_003s_shape(staff_api):
    response = staff_api.post(
        "/api/v1/instances/local-chat",
        body(environment={"HF_TOKEN": SECRET, "LANG": "C"}, restart_delay=2),
        format="json",
    )
    assert response.status_code == 201, response.content
    data = response.json()
    instance = Instance.objects.get(name="local-chat")
    assert data["id"] == instance.pk
    assert data["created"] == int(instance.created_at.timestamp())
    assert data["desired_state"] == DesiredState.RUNNING == instance.desired_state
    assert data["status"] == "stopped"
    assert data["model"] is None
    assert data["options"]["backend_type"] == "command"
    assert data["options"]["restart_delay"] == 2
    assert data["options"]["environment"] == {"HF_TOKEN": "********", "LANG": "C"}
    assert instance.environment["HF_TOKEN"] == SECRET
    assert set(data["options"]) >= {
        "auto_restart",
        "command_override",
        "environment",
        "idle_timeout",
        "max_restarts",
        "on_demand_start",
        "restart_delay",
        "backend_options",
        "readiness_path",
        "ready_timeout",
        "node",
        "port",
    }
    assert "-m fakeupstream --host 127.0.0.1 --port '{port}'" in data["command"]
    assert data["options"]["command_override"] == FAKE_COMMAND


@pytest.mark.django_db
def test_it_lists_and_gets_instances(staff_api):
    create("b-one")
    create("a-two")
    listed = staff_api.get("/api/v1/instances").json()
    assert [i["name"] for i in listed] == ["a-two", "b-one"]
    detail = staff_api.get("/api/v1/instances/b-one").json()
    assert detail["name"] == "b-one"
    assert detail["desired_state"] == "stopped"


@pytest.mark.django_db
def test_it_masks_secrets_in_arguments_environment_and_command(staff_api):
    options = body(
        backend_type="llama_cpp",
        command_override="",
        backend_options={"model": "/models/m.gguf", "extra_args": ["--api-key", SECRET]},
        environment={"OPENAI_API_KEY": SECRET},
    )
    response = staff_api.post("/api/v1/instances/masked", options, format="json")
    assert response.status_code == 201, response.content
    for text in (response.content, staff_api.get("/api/v1/instances").content):
        assert SECRET.encode() not in text
    data = response.json()
    assert data["options"]["backend_options"]["extra_args"] == ["--api-key", "********"]
    assert data["command"].startswith("llama-server -m /models/m.gguf --host 127.0.0.1")


@pytest.mark.django_db
def test_it_keeps_secrets_when_the_masked_options_are_sent_back(staff_api):
    command = f"{FAKE_COMMAND} --api-key {SECRET}"
    create(
        "keep",
        environment={"HF_TOKEN": SECRET},
        extra_args=["--api-key", SECRET],
        command_override=command,
    )
    response = staff_api.get("/api/v1/instances/keep")
    assert SECRET.encode() not in response.content
    shown = response.json()["options"]
    sent = {
        "environment": {**shown["environment"], "EXTRA": "1"},
        "backend_options": {"extra_args": shown["backend_options"]["extra_args"]},
        "command_override": shown["command_override"],
    }
    assert staff_api.put("/api/v1/instances/keep", sent, format="json").status_code == 200
    instance = Instance.objects.get(name="keep")
    assert instance.environment == {"HF_TOKEN": SECRET, "EXTRA": "1"}
    assert instance.extra_args == ["--api-key", SECRET]
    assert instance.command_override == command


@pytest.mark.django_db
def test_it_starts_stops_and_restarts(staff_api):
    instance = create("x")
    Instance.objects.filter(pk=instance.pk).update(restart_count=3)
    started = staff_api.post("/api/v1/instances/x/start").json()
    assert (started["desired_state"], started["restart_count"]) == ("running", 0)
    before = timezone.now()
    restarted = staff_api.post("/api/v1/instances/x/restart")
    assert restarted.status_code == 200
    instance.refresh_from_db()
    assert instance.desired_state == DesiredState.RUNNING
    assert instance.restart_requested_at >= before
    stopped = staff_api.post("/api/v1/instances/x/stop").json()
    assert stopped["desired_state"] == "stopped"
    assert Instance.objects.get(pk=instance.pk).desired_state == DesiredState.STOPPED


@pytest.mark.django_db
def test_it_restarts_a_running_instance_whose_options_change(staff_api):
    running = create("running", start=True)
    stopped = create("stopped")
    for name in ("running", "stopped"):
        response = staff_api.put(f"/api/v1/instances/{name}", {"restart_delay": 9}, format="json")
        assert response.status_code == 200
        assert response.json()["options"]["restart_delay"] == 9
    running.refresh_from_db()
    stopped.refresh_from_db()
    assert running.restart_requested_at is not None
    assert stopped.restart_requested_at is None
    assert stopped.restart_delay == 9


@pytest.mark.django_db
def test_it_does_not_restart_a_running_instance_for_an_update_that_changes_nothing(staff_api):
    running = create("running", start=True, restart_delay=4)
    response = staff_api.put("/api/v1/instances/running", {"restart_delay": 4}, format="json")
    assert response.status_code == 200
    running.refresh_from_db()
    assert running.restart_requested_at is None


@pytest.mark.django_db
def test_it_deletes_an_instance_and_its_upstreams(staff_api):
    response = staff_api.post("/api/v1/instances/gone", body(model="gone-model"), format="json")
    assert response.status_code == 201
    assert Upstream.objects.filter(instance__name="gone").count() == 1
    assert staff_api.delete("/api/v1/instances/gone").status_code == 204
    assert not Instance.objects.filter(name="gone").exists()
    assert not Upstream.objects.filter(name="gone").exists()
    assert AIModel.objects.filter(name="gone-model").exists()
    assert error_of(staff_api.get("/api/v1/instances/gone"))["code"] == "instance_not_found"


# --- Registration: an instance is an upstream -----------------------------------------------


@pytest.mark.django_db
def test_it_registers_a_new_model_served_by_the_instance(staff_api):
    response = staff_api.post(
        "/api/v1/instances/local", body(model="local-chat", priority=2), format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["model"] == "local-chat"
    upstream = Upstream.objects.get(model__name="local-chat")
    assert upstream.instance.name == "local"
    assert (upstream.name, upstream.base_url, upstream.priority) == ("local", "", 2)
    assert upstream.provider_model_id == "local"


@pytest.mark.django_db
def test_it_adds_the_instance_to_an_existing_model(staff_api):
    model = AIModelFactory(name="chat")
    UpstreamFactory(model=model, name="cloud")
    options = body(
        backend_type="mlx",
        command_override="",
        backend_options={"model": "mlx-community/SmolLM2"},
        model="chat",
        priority=1,
    )
    assert staff_api.post("/api/v1/instances/mac", options, format="json").status_code == 201
    upstreams = {u.name: u for u in Upstream.objects.filter(model=model)}
    assert set(upstreams) == {"cloud", "mac"}
    assert upstreams["mac"].provider_model_id == "mlx-community/SmolLM2"
    assert AIModel.objects.filter(name="chat").count() == 1
    # Changing the options changes the name the server answers to.
    staff_api.put("/api/v1/instances/mac", {"backend_options": {"model": "other"}}, format="json")
    assert Upstream.objects.get(name="mac").provider_model_id == "other"


@pytest.mark.django_db
def test_it_lists_an_instance_served_model_to_callers_linked_to_it(
    staff_api, client, acme, bob, charlie
):
    staff_api.post("/api/v1/instances/local", body(model="local-chat"), format="json")
    ModelLinkFactory(model=AIModel.objects.get(name="local-chat"), organisation=acme)
    for prefix in ("/v1", "/api/v1", "/api/ai/openai/v1"):
        for user, expected in ((bob, ["local-chat"]), (charlie, [])):
            _, key = apikey_create(user=user, name=f"{user.username}{prefix}")
            response = client.get(f"{prefix}/models", headers={"Authorization": f"Bearer {key}"})
            assert [m["id"] for m in response.json()["data"]] == expected


@pytest.mark.django_db
def test_it_lists_instances_in_a_fixed_number_of_queries(staff_api, assert_fixed_queries):
    serial = iter(range(1000))

    def add_rows():
        for _ in range(2):
            n = next(serial)
            services.instance_create(
                name=f"i-{n}",
                options={"backend": "command", "command_override": FAKE_COMMAND},
                model=f"model-{n}",
                start=False,
            )

    def listed():
        response = staff_api.get("/api/v1/instances")
        assert response.status_code == 200
        return len(response.json())

    # The key, its user and their permissions; the instances; their upstreams with models;
    # the nodes (the host each command line shows).
    assert_fixed_queries(5, listed, add_rows)


# --- Who may ----------------------------------------------------------------------------------


def registry_only(ok: int) -> dict:
    return {"anonymous": 401, "charlie": 403, "bob": 403, "alice": 403, "manager": ok, "staff": ok}


ROUTES = [
    ("/api/v1/instances", "get", None, registry_only(200)),
    ("/api/v1/instances/x", "get", None, registry_only(200)),
    ("/api/v1/instances/new", "post", body(), registry_only(201)),
    ("/api/v1/instances/x", "put", {"restart_delay": 7}, registry_only(200)),
    ("/api/v1/instances/x", "delete", None, registry_only(204)),
    ("/api/v1/instances/x/start", "post", None, registry_only(200)),
    ("/api/v1/instances/x/stop", "post", None, registry_only(200)),
    ("/api/v1/instances/x/restart", "post", None, registry_only(200)),
    ("/api/v1/instances/x/logs", "get", None, registry_only(200)),
    ("/api/v1/instances/x/proxy/v1/models", "get", None, registry_only(503)),
    ("/api/v1/instances/x/proxy/v1/chat/completions", "post", {}, registry_only(503)),
]


def fingerprint() -> tuple:
    return (
        list(
            Instance.objects.values_list(
                "id", "desired_state", "restart_delay", "restart_requested_at"
            )
        ),
        list(Upstream.objects.values_list("id")),
    )


@pytest.mark.parametrize(
    ("route", "method", "data", "persona", "status"),
    [
        pytest.param(r, m, d, p, expected[p], id=f"{m}-{r}-{p}")
        for r, m, d, expected in ROUTES
        for p in PERSONAS
    ],
)
@pytest.mark.django_db
def test_it_answers_each_persona_as_the_matrix_says(
    api, keys, agent, route, method, data, persona, status
):
    create("x")
    before = fingerprint()
    response = getattr(as_key(api, keys.get(persona)), method)(route, data, format="json")
    assert response.status_code == status, response.content
    if status >= 400:
        error_of(response)
    if status in (401, 403):
        assert fingerprint() == before


@pytest.mark.django_db
def test_it_refuses_a_key_without_the_manage_permission(api, staff):
    create("x")
    _, key = apikey_create(user=staff, name="ro", permissions=[Permission.READ, Permission.PROXY])
    client = as_key(api, key)
    for method, route in (
        ("get", "/api/v1/instances"),
        ("post", "/api/v1/instances/x/start"),
        ("get", "/api/v1/instances/x/proxy/v1/models"),
    ):
        response = getattr(client, method)(route)
        assert response.status_code == 403
        assert "manage" in error_of(response)["message"]
    assert Instance.objects.get().desired_state == DesiredState.STOPPED


# --- Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Upper", "-lead", "trail-", "under_score", "a" * 64, "dot.ted", "x%0A", "sp%20ace"]
)
@pytest.mark.django_db
def test_it_refuses_a_name_that_is_not_a_dns_label(staff_api, name):
    for method, route in (
        ("post", f"/api/v1/instances/{name}"),
        ("get", f"/api/v1/instances/{name}"),
        ("post", f"/api/v1/instances/{name}/start"),
        ("get", f"/api/v1/instances/{name}/logs"),
        ("get", f"/api/v1/instances/{name}/proxy/v1/models"),
    ):
        response = getattr(staff_api, method)(route, body(), format="json")
        assert response.status_code == 400, (route, response.content)
        assert error_of(response)["code"] == "invalid_name"
    assert not Instance.objects.exists()


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"restart_delay": "5"}, "restart_delay"),
        ({"restart_delay": 5.5}, "restart_delay"),
        ({"restart_delay": True}, "restart_delay"),
        ({"restart_delay": -1}, "restart_delay"),
        ({"max_restarts": 10**12}, "max_restarts"),
        ({"ready_timeout": 0}, "ready_timeout"),
        ({"port": 80}, "port"),
        ({"port": 70000}, "port"),
        ({"auto_restart": "yes"}, "auto_restart"),
        ({"auto_restart": 1}, "auto_restart"),
        ({"command_override": 5}, "command_override"),
        ({"command_override": "run\u0000me"}, "command_override"),
        ({"command_override": "'unbalanced {port}"}, "command_override"),
        ({"command_override": "{nope} {port}"}, "command_override"),
        ({"environment": {"A": 1}}, "environment.A"),
        ({"environment": {"BAD NAME": "x"}}, "environment"),
        ({"environment": ["A=1"]}, "environment"),
        ({"backend_type": "docker"}, "backend_type"),
        ({"backend_type": "llama_cpp", "command_override": ""}, "backend_options.model"),
        ({"backend_options": {"context_size": -5}}, "backend_options.context_size"),
        ({"backend_options": {"threads": 10**9}}, "backend_options.threads"),
        ({"backend_options": {"extra_args": "--x"}}, "backend_options.extra_args"),
        ({"backend_options": {"extra_args": [1]}}, "backend_options.extra_args.0"),
        ({"backend_options": {"flash": True}}, "backend_options.flash"),
        # panel.errors names no field for a non-object where an object belongs.
        ({"backend_options": []}, None),
        ({"unknown": 1}, "unknown"),
        ({"docker_enabled": True}, "docker_enabled"),
        ({"max_restarts": None}, "max_restarts"),
        ({"readiness_path": "health"}, "readiness_path"),
        ({"priority": -1}, "priority"),
        ({"model": ""}, "model"),
        ({"model": 7}, "model"),
        ({"idle_timeout": 10**10}, "idle_timeout"),
    ],
)
@pytest.mark.django_db
def test_it_refuses_bad_options_with_a_400(staff_api, options, param):
    response = staff_api.post("/api/v1/instances/x", body(**options), format="json")
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["param"] == param, error
    assert not Instance.objects.exists()
    assert not AIModel.objects.exists()


@pytest.mark.parametrize(
    "raw", [b"[1, 2]", b"not json", b'"text"', b'{"restart_delay": 1e999}', b"null"]
)
@pytest.mark.django_db
def test_it_refuses_a_body_that_is_not_a_json_object(staff_api, raw):
    create("x")
    response = staff_api.generic("PUT", "/api/v1/instances/x", raw, content_type="application/json")
    assert response.status_code == 400, response.content
    error_of(response)


@pytest.mark.django_db
def test_it_refuses_a_name_or_port_already_taken(staff_api):
    create("x", port=8300)
    taken = staff_api.post("/api/v1/instances/x", body(), format="json")
    assert taken.status_code == 400
    assert error_of(taken)["param"] == "name"
    port = staff_api.post("/api/v1/instances/y", body(port=8300), format="json")
    assert port.status_code == 400
    error_of(port)
    assert Instance.objects.count() == 1


@pytest.mark.django_db
def test_it_answers_404_for_an_unknown_instance_on_every_route(staff_api):
    for method, route in (
        ("get", "/api/v1/instances/nope"),
        ("put", "/api/v1/instances/nope"),
        ("delete", "/api/v1/instances/nope"),
        ("post", "/api/v1/instances/nope/start"),
        ("post", "/api/v1/instances/nope/stop"),
        ("post", "/api/v1/instances/nope/restart"),
        ("get", "/api/v1/instances/nope/logs"),
        ("get", "/api/v1/instances/nope/proxy/v1/models"),
        ("post", "/api/v1/instances/nope/proxy/v1/chat/completions"),
    ):
        response = getattr(staff_api, method)(route, {}, format="json")
        assert response.status_code == 404, route
        error = error_of(response)
        assert (error["code"], error["type"]) == ("instance_not_found", "invalid_request_error")


@pytest.mark.parametrize("lines", ["0", "-1", "abc", "1.5", "99999999", "", "²"])
@pytest.mark.django_db
def test_it_refuses_bad_log_line_counts(staff_api, agent, lines):
    create("x")
    response = staff_api.get("/api/v1/instances/x/logs", {"lines": lines})
    assert response.status_code == 400
    assert error_of(response)["param"] == "lines"
    assert agent.log_requests == []


@pytest.mark.django_db
def test_it_answers_503_from_the_proxy_when_the_instance_is_not_running(staff_api):
    create("x", start=True)
    Instance.objects.filter(name="x").update(status=InstanceStatus.STARTING, port=8400)
    response = staff_api.get("/api/v1/instances/x/proxy/v1/models")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "instance_not_running"
    assert "starting" in error["message"]
    # It never starts one either.
    assert Instance.objects.get(name="x").status == InstanceStatus.STARTING


@pytest.mark.django_db
def test_it_refuses_a_proxied_body_over_the_upload_limit(staff_api, settings):
    create("x", start=True)
    Instance.objects.filter(name="x").update(status=InstanceStatus.RUNNING, port=8401)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    response = staff_api.post(
        "/api/v1/instances/x/proxy/v1/chat/completions", {"pad": "x" * 200}, format="json"
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_the_openapi_schema_still_builds_with_the_instance_routes(client, db):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    assert {
        "/api/v1/instances",
        "/api/v1/instances/{name}",
        "/api/v1/instances/{name}/logs",
    } <= set(paths)
    assert set(paths["/api/v1/instances/{name}"]) >= {"get", "post", "put", "delete"}


# --- The agent: answering, and down ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_nudges_the_agent_after_each_write(staff_api, agent):
    assert staff_api.post("/api/v1/instances/x", body(), format="json").status_code == 201
    assert agent.nudges == 1
    for action in ("stop", "start", "restart"):
        assert staff_api.post(f"/api/v1/instances/x/{action}").status_code == 200
    assert (
        staff_api.put("/api/v1/instances/x", {"restart_delay": 1}, format="json").status_code == 200
    )
    assert staff_api.delete("/api/v1/instances/x").status_code == 204
    assert agent.nudges == 6
    assert agent.refused == 0


@pytest.mark.django_db(transaction=True)
def test_it_saves_the_change_and_answers_503_when_the_agent_is_down(staff_api):
    response = staff_api.post("/api/v1/instances/x", body(), format="json")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "agent_unavailable"
    assert "saved" in error["message"]
    assert Instance.objects.get(name="x").desired_state == DesiredState.RUNNING
    response = staff_api.post("/api/v1/instances/x/stop")
    assert error_of(response)["code"] == "agent_unavailable"
    assert Instance.objects.get(name="x").desired_state == DesiredState.STOPPED
    assert staff_api.delete("/api/v1/instances/x").status_code == 503
    assert not Instance.objects.exists()


@pytest.mark.django_db
def test_it_relays_the_last_log_lines_as_text(staff_api, agent):
    create("x")
    agent.logs["x"] = "".join(f"line {n}\n" for n in range(10))
    response = staff_api.get("/api/v1/instances/x/logs", {"lines": "3"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == "line 7\nline 8\nline 9\n"
    everything = staff_api.get("/api/v1/instances/x/logs").content.decode()
    assert everything.count("\n") == 10
    assert agent.log_requests == [{"name": "x", "lines": ["3"]}, {"name": "x", "lines": None}]


@pytest.mark.django_db
def test_it_answers_503_for_logs_when_the_agent_is_down(staff_api):
    create("x")
    response = staff_api.get("/api/v1/instances/x/logs")
    assert response.status_code == 503
    assert error_of(response)["code"] == "agent_unavailable"


# --- The proxy, over a real server ---------------------------------------------------------------


@pytest.fixture
def running(transactional_db, fake_upstream, asgi_server, staff):
    """Instance x, running (as its agent would record it) at the fake upstream's port."""
    fake_upstream.clear()
    create("x", start=True)
    Instance.objects.filter(name="x").update(status=InstanceStatus.RUNNING, port=fake_upstream.port)
    _, key = apikey_create(user=staff, name="staff-manage", permissions=[Permission.MANAGE])
    return httpx.Client(
        base_url=f"{asgi_server.url}/api/v1/instances/x/proxy",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def proxy_url(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def test_it_proxies_a_get_with_its_query_to_the_running_instance(running, fake_upstream):
    response = running.get("/v1/models", params={"limit": "2"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "fake-chat" in [m["id"] for m in response.json()["data"]]
    seen = fake_upstream.requests()[-1]
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/v1/models", "limit=2")
    assert seen["authorization"]["present"] is False  # the caller's key stays here


def test_it_proxies_a_chat_completion_and_its_stream(running, fake_upstream):
    chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    response = running.post("/v1/chat/completions", json=chat)
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    with running.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    assert text.rstrip().endswith("data: [DONE]")
    assert '"chat.completion.chunk"' in text
    assert fake_upstream.requests()[-1]["json"]["stream"] is True


def test_it_relays_the_instance_s_own_error_status(running):
    response = running.get("/v1/nowhere")
    assert response.status_code == 404


def test_the_openai_sdk_talks_to_an_instance_through_the_proxy(running):
    sdk = OpenAI(
        base_url=f"{proxy_url(running)}/v1",
        api_key=running.headers["Authorization"].removeprefix("Bearer "),
        max_retries=0,
    )
    reply = sdk.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content


def test_the_proxy_refuses_charlie_and_anonymous_callers(running, charlie, fake_upstream):
    _, key = apikey_create(user=charlie, name="charlie", permissions=[Permission.MANAGE])
    before = len(fake_upstream.requests())
    refused = running.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403
    anonymous = httpx.get(f"{proxy_url(running)}/v1/models")
    assert anonymous.status_code == 401
    assert len(fake_upstream.requests()) == before


def test_the_proxy_answers_503_once_the_instance_stops(running):
    Instance.objects.filter(name="x").update(status=InstanceStatus.STOPPED)
    response = running.get("/v1/models")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "instance_not_running"
