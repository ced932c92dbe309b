"""/api/v1/backends (seed 003): command lines parsed into instance options, and what this
host's llama-server says of itself (a stand-in script on PATH; none at all)."""

import os
import shlex
import threading
from pathlib import Path

import httpx
import pytest

from accounts.services import apikey_create
from ai.instances import programs
from ai.instances.backends import CommandError, command_line, parse_command
from ai.models import Instance
from tests.api import conftest as management
from tests.api.conftest import MANAGE, as_key
from tests.instances import stand_in_agent
from tests.servers import wait_for

api, keys, manager, staff = management.api, management.keys, management.manager, management.staff
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent

PERSONAS = ["anonymous", "charlie", "bob", "alice", "manager", "staff"]
COMPARED = ("backend", "model_path", "context_size", "gpu_layers", "threads", "parallel")


@pytest.fixture
def staff_api(api, staff):
    return as_key(api, apikey_create(user=staff, name="m", permissions=MANAGE)[1])


def parse(client, backend: str, command, **extra):
    return client.post(
        f"/api/v1/backends/{backend}/parse-command", {"command": command, **extra}, format="json"
    )


# --- Parsing: the round trip ---------------------------------------------------------------


ROUND_TRIPS = [
    {
        "backend": "llama_cpp",
        "model_path": "/models/smol 135m.gguf",
        "context_size": 4096,
        "gpu_layers": 0,
        "threads": 8,
        "parallel": 2,
        "extra_args": ["--jinja", "--api-key", "sk-x", "--temp=0.2"],
    },
    {"backend": "llama_cpp", "model_path": "m.gguf", "command_override": "/opt/llama.cpp/bin/llama-server"},
    {
        "backend": "vllm",
        "model_path": "Qwen/Qwen2.5-0.5B",
        "context_size": 8192,
        "parallel": 16,
        "extra_args": ["--dtype", "auto", "--enable-prefix-caching"],
    },
    {"backend": "vllm", "model_path": "org/m", "command_override": "/venv/bin/vllm serve"},
    {"backend": "mlx", "model_path": "mlx-community/Qwen", "extra_args": ["--trust-remote-code"]},
    {"backend": "mlx", "model_path": "m", "command_override": "python3 -m mlx_lm.server"},
]  # fmt: skip


@pytest.mark.parametrize("options", ROUND_TRIPS, ids=lambda o: f"{o['backend']}-{len(o)}")
def test_a_command_line_parses_back_into_the_options_it_was_built_from(options):
    instance = Instance(name="x", **options)
    line = shlex.join(command_line(instance, host="0.0.0.0", port=8123))

    parsed = parse_command(instance.backend, line)

    assert {k: parsed.get(k) for k in COMPARED} == {k: getattr(instance, k) for k in COMPARED}
    assert parsed["extra_args"] == instance.extra_args
    assert parsed["command_override"] == instance.command_override
    assert parsed["port"] == 8123 and parsed["environment"] == {}


@pytest.mark.django_db
def test_the_parsed_options_create_the_instance_that_runs_that_command(staff_api):
    line = (
        "CUDA_VISIBLE_DEVICES=0 llama-server -m /models/smol.gguf --ctx-size=4096 "
        "--n-gpu-layers 99 -t 4 --host 0.0.0.0 --port 8080 --jinja \\\n  -np 2"
    )
    response = parse(staff_api, "llama-cpp", line)

    assert response.status_code == 200, response.content
    options = response.json()
    assert options == {
        "backend_type": "llama_cpp",
        "backend_options": {
            "model": "/models/smol.gguf",
            "context_size": 4096,
            "gpu_layers": 99,
            "threads": 4,
            "parallel": 2,
            "extra_args": ["--jinja"],
        },
        "command_override": "",
        "environment": {"CUDA_VISIBLE_DEVICES": "0"},
        "port": 8080,
    }
    created = staff_api.post("/api/v1/instances/smol", {**options}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["command"] == (
        "llama-server -m /models/smol.gguf --host 127.0.0.1 --port 8080 -c 4096 -ngl 99 -t 4 "
        "-np 2 --jinja"
    )
    assert Instance.objects.get(name="smol").environment == {"CUDA_VISIBLE_DEVICES": "0"}


@pytest.mark.parametrize(
    ("backend", "line", "expected"),
    [
        # A value the field cannot hold is passed on as written; so is any other flag.
        ("llama_cpp", "llama-server -m m -ngl all -fa", {"extra_args": ["-ngl", "all", "-fa"]}),
        # vLLM takes underscores; it serves the instance's name, not the one given.
        (
            "vllm",
            "vllm serve org/m --max_model_len=2048 --served-model-name other --port 9000",
            {"context_size": 2048, "port": 9000, "extra_args": []},
        ),
        (
            "vllm",
            "python -m vllm.entrypoints.openai.api_server --model org/m --max-num-seqs 4",
            {"model_path": "org/m", "parallel": 4, "command_override": "python -m vllm.entrypoints.openai.api_server"},
        ),
        ("mlx", "mlx_lm.server --model m --host 127.0.0.1 --port=8081", {"port": 8081}),
    ],
)  # fmt: skip
def test_it_reads_other_spellings_and_keeps_what_it_does_not_know(backend, line, expected):
    parsed = parse_command(backend, line)
    assert {k: parsed[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("route", "line", "message"),
    [
        ("vllm", "llama-server -m x.gguf", "This is not a command of vLLM: it starts with llama-server"),
        ("llama-cpp", "vllm serve org/m", "starts with vllm, not llama-server"),
        ("mlx", "python -m vllm.entrypoints.openai.api_server", "not mlx_lm.server or python -m mlx_lm.server"),
        ("llama-cpp", "python -m llama_cpp.server --model m", "starts with python -m llama_cpp.server"),
        ("llama-cpp", "llama-server -m 'x.gguf", "The command cannot be parsed: No closing quotation."),
        ("llama-cpp", "", "The command is empty."),
        ("llama-cpp", "   \n ", "The command is empty."),
        ("llama-cpp", "HF_HOME=/x", "The command sets variables but runs no program."),
        ("llama-cpp", "llama-server -m x.gguf -c", "-c needs a value."),
        ("llama-cpp", "llama-server -m x.gguf --port http", "--port needs a port number from 1 to 65535"),
        ("vllm", "vllm serve m --port 70000", "--port needs a port number"),
    ],
)  # fmt: skip
@pytest.mark.django_db
def test_it_refuses_a_line_it_cannot_read_with_a_400(staff_api, route, line, message):
    response = parse(staff_api, route, line)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["param"], error["code"]) == ("command", "invalid_value")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"command": "llama-server -m x", "backend": "vllm"}, "backend"),
        ({"command": 42}, "command"),
        ({"command": None}, "command"),
        ({}, "command"),
        ({"command": "llama-server -m x\0"}, "command"),
    ],
)
@pytest.mark.django_db
def test_it_refuses_a_body_that_is_not_one_command_string(staff_api, body, param):
    response = staff_api.post("/api/v1/backends/llama-cpp/parse-command", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_parse_error_is_a_command_error():
    with pytest.raises(CommandError):
        parse_command("llama_cpp", "llama-server -m")


# --- What llama-server says -----------------------------------------------------------------


FAKE_LLAMA_SERVER = """#!/bin/sh
# A stand-in for llama.cpp's llama-server: the three questions the API asks it.
echo $$ > "{dir}/pid"
case "$1" in
  --help) echo "usage: llama-server [options]"; echo "-m, --model FNAME   model path";;
  --version)
    if [ -f "{dir}/broken" ]; then
      echo "error while loading shared libraries: libcuda.so.1" >&2; exit 127
    fi
    echo "version: 4242 (deadbeef)" >&2; echo "built with cc for x86_64" >&2;;
  --list-devices)
    touch "{dir}/started"
    while [ ! -f "{dir}/go" ]; do sleep 0.05; done
    echo "Available devices:"; echo "  CUDA0: Fake GPU (1024 MiB, 1000 MiB free)";;
  *) echo "error: invalid argument: $1" >&2; exit 1;;
esac
"""


@pytest.fixture
def llama_bin(tmp_path, monkeypatch) -> Path:
    """A directory on PATH holding the stand-in llama-server (and nothing else of llama.cpp)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "llama-server"
    script.write_text(FAKE_LLAMA_SERVER.format(dir=tmp_path))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")
    (tmp_path / "go").touch()  # --list-devices answers at once unless a test removes it
    return tmp_path


@pytest.mark.django_db
def test_it_relays_llama_server_s_help_and_version_as_text(staff_api, llama_bin):
    helped = staff_api.get("/api/v1/backends/llama-cpp/help")
    assert helped.status_code == 200
    assert helped["Content-Type"] == "text/plain; charset=utf-8"
    assert helped.content.decode().startswith("usage: llama-server [options]\n-m, --model")

    version = staff_api.get("/api/v1/backends/llama-cpp/version")  # llama.cpp prints to stderr
    assert version.content.decode() == "version: 4242 (deadbeef)\nbuilt with cc for x86_64\n"
    devices = staff_api.get("/api/v1/backends/llama-cpp/devices")
    assert "CUDA0: Fake GPU" in devices.content.decode()


@pytest.mark.django_db
def test_it_answers_503_when_llama_server_is_not_installed(staff_api, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    for question in ("help", "version", "devices"):
        response = staff_api.get(f"/api/v1/backends/llama-cpp/{question}")
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "backend_unavailable"
        assert error["message"].startswith("llama-server is not installed on this host")


@pytest.mark.django_db
def test_it_answers_503_and_kills_a_llama_server_that_hangs(staff_api, llama_bin, monkeypatch):
    monkeypatch.setattr(programs, "TIMEOUT", 0.5)
    (llama_bin / "go").unlink()

    response = staff_api.get("/api/v1/backends/llama-cpp/devices")

    assert response.status_code == 503
    assert "llama-server --list-devices did not finish within 0.5 s." in response.content.decode()
    pid = int((llama_bin / "pid").read_text())
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _is_zombie(pid), 10, "it to be killed")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.django_db
def test_it_answers_503_with_the_reason_when_llama_server_fails(staff_api, llama_bin):
    (llama_bin / "broken").touch()
    response = staff_api.get("/api/v1/backends/llama-cpp/version")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == (
        "llama-server --version failed (exit status 127): error while loading shared "
        "libraries: libcuda.so.1"
    )


@pytest.mark.django_db(transaction=True)
def test_a_slow_llama_server_does_not_hold_up_other_requests(asgi_server, staff, llama_bin):
    key = apikey_create(user=staff, name="m", permissions=MANAGE)[1]
    headers = {"Authorization": f"Bearer {key}"}
    (llama_bin / "go").unlink()
    answers = []
    slow = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{asgi_server.url}/api/v1/backends/llama-cpp/devices", headers=headers)
        )
    )
    slow.start()
    wait_for(lambda: (llama_bin / "started").exists(), 30, "llama-server to be asked")

    # The server answers other requests while llama-server runs.
    assert httpx.get(f"{asgi_server.url}/api/v1/version").status_code == 200
    assert httpx.get(f"{asgi_server.url}/api/v1/nodes", headers=headers).status_code == 200
    assert slow.is_alive() and not answers

    (llama_bin / "go").touch()
    slow.join(timeout=30)
    assert answers[0].status_code == 200 and "CUDA0" in answers[0].text


# --- Who may ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("post", "/api/v1/backends/llama-cpp/parse-command"),
        ("post", "/api/v1/backends/vllm/parse-command"),
        ("post", "/api/v1/backends/mlx/parse-command"),
        ("get", "/api/v1/backends/llama-cpp/help"),
        ("get", "/api/v1/backends/llama-cpp/version"),
        ("get", "/api/v1/backends/llama-cpp/devices"),
    ],
)
@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.django_db
def test_only_staff_and_model_managers_may_use_the_backend_helpers(
    api, keys, llama_bin, persona, method, route
):
    client = as_key(api, keys.get(persona))
    response = getattr(client, method)(route, {"command": "mlx_lm.server --model m"}, format="json")
    if persona in ("manager", "staff"):
        assert response.status_code in (200, 400), response.content  # 400: not that backend's
    else:
        expected = 401 if persona == "anonymous" else 403
        assert response.status_code == expected, response.content
        assert "usage" not in response.content.decode()
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
