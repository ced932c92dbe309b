"""The container form of the production topology (issue 19): docker/compose.yaml, its
Dockerfile, .dockerignore, .env.example and the load balancer's config.

No Docker daemon or compose plugin here: the compose file is read as Compose reads it
(.env interpolation, refused required variables), validated against the Compose
Specification's schema (vendored in tests/reference/) and checked for its topology; Debian's
docker-compose and HAProxy, which `make test` installs, check it again for real."""

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web
from cryptography.fernet import Fernet

from panel.http import uvicorn_args
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
APP_SERVICES = ("web", "worker", "beat", "agent")
REQUIRED_SECRETS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEY", "POSTGRES_PASSWORD")
SECRETS = {
    "SECRET_KEY": "deploy-files-test-secret-key",
    "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    "POSTGRES_PASSWORD": "deploy-files-test-password",
}


class Refused(Exception):
    """Compose would refuse the file: a required variable is unset or empty."""


def _dotenv(text: str) -> dict[str, str]:
    """An env file as Compose reads it: KEY=VALUE lines, # comments, optional quotes."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_]\w*)"
    r"|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


def _substitute(match: re.Match, env: dict[str, str]) -> str:
    if match["escaped"]:
        return "$"
    name = match["plain"] or match["name"]
    value, op = env.get(name), match["op"] or ""
    missing = value is None or (op.startswith(":") and value == "")
    if op.endswith("?") and missing:
        raise Refused(f"{name}: {match['arg']}")
    if op.endswith("-") and missing:
        return match["arg"]
    return value or ""


def _interpolate(node, env: dict[str, str]):
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(node, dict):
        return {key: _interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    if isinstance(node, str):
        return VARIABLE.sub(lambda match: _substitute(match, env), node)
    return node


def _example_env(**changes: str) -> dict[str, str]:
    """.env.example copied as .env, with `changes` written into it."""
    return {**_dotenv((ROOT / ".env.example").read_text()), **changes}


def _compose(env: dict[str, str]) -> dict:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()), env)


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as `up` would read it, .env being .env.example with its secrets set."""
    return _compose(_example_env(**SECRETS))


def _services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def test_env_example_leaves_every_required_secret_empty():
    example = _dotenv((ROOT / ".env.example").read_text())
    assert {name: example.get(name) for name in REQUIRED_SECRETS} == dict.fromkeys(
        REQUIRED_SECRETS, ""
    )
    assert "change-me" not in (ROOT / ".env.example").read_text().lower()


def test_compose_refuses_the_example_env_until_its_secrets_are_set():
    with pytest.raises(Refused):
        _compose(_example_env())


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_each_required_secret(secret):
    with pytest.raises(Refused, match=f"{secret}: set {secret} in .env"):
        _compose(_example_env(**{**SECRETS, secret: ""}))
    without = {k: v for k, v in _example_env(**SECRETS).items() if k != secret}
    with pytest.raises(Refused, match=secret):
        _compose(without)


def test_compose_file_is_valid_against_the_compose_specification(compose):
    schema = json.loads((ROOT / "tests" / "reference" / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    broken = {**compose, "services": {**compose["services"], "web": {"replicas": 2}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(broken)


def test_only_the_load_balancer_publishes_a_host_port(compose):
    services = _services(compose)
    assert {name for name, service in services.items() if service.get("ports")} == {"lb"}
    assert services["lb"]["ports"] == ["127.0.0.1:8000:8080"]
    assert services["lb"]["image"].startswith("haproxy:")
    assert services["lb"]["volumes"] == ["./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    assert "bind :8080" in (ROOT / "docker" / "haproxy.cfg").read_text()


def test_publish_address_moves_the_one_host_port():
    compose = _compose(_example_env(**SECRETS, PUBLISH_ADDRESS="0.0.0.0:80"))
    assert compose["services"]["lb"]["ports"] == ["0.0.0.0:80:8080"]


def test_web_and_workers_are_replicated_and_beat_and_agent_are_single(compose):
    services = _services(compose)
    assert services["web"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"][:4] == ["celery", "-A", "panel", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "panel", "beat"]
    assert services["agent"]["command"] == ["python", "manage.py", "instance_agent"]
    for single in ("beat", "agent", "migrate"):
        assert services[single].get("deploy", {}).get("replicas", 1) == 1
    assert "command" not in services["web"]  # the image's: the Dockerfile's uvicorn


def test_app_services_wait_for_migrate_and_healthy_database_and_redis(compose):
    services = _services(compose)
    for name in APP_SERVICES:
        assert services[name]["depends_on"] == {
            "db": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    migrate = services["migrate"]
    assert migrate["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert migrate["restart"] == "no"
    assert set(migrate["depends_on"]) == {"db", "redis"}
    assert services["lb"]["depends_on"] == {"web": {"condition": "service_healthy"}}


def test_database_redis_web_and_agent_have_healthchecks(compose):
    services = _services(compose)
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    web_check = services["web"]["healthcheck"]["test"]
    assert web_check[:3] == ["CMD", "python", "-c"] and "/readyz" in web_check[3]
    assert "curl" not in json.dumps(services)  # python:slim has none
    assert services["agent"]["healthcheck"]["test"][:2] == ["CMD", "python"]
    for oneshot_or_beat in ("migrate", "beat"):
        assert services[oneshot_or_beat]["healthcheck"] == {"disable": True}


def test_app_services_run_with_debug_off_on_postgres_and_redis(compose):
    for name in (*APP_SERVICES, "migrate"):
        environment = _services(compose)[name]["environment"]
        assert environment["DEBUG"] == "false"
        assert environment["SECRET_KEY"] == SECRETS["SECRET_KEY"]
        assert environment["FIELD_ENCRYPTION_KEY"] == SECRETS["FIELD_ENCRYPTION_KEY"]
        assert environment["DATABASE_URL"] == (
            f"postgres://switchboard:{SECRETS['POSTGRES_PASSWORD']}@db:5432/switchboard"
        )
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
        assert environment["INSTANCE_AGENT_URL"] == "http://agent:9201"
        assert "localhost" in environment["ALLOWED_HOSTS"].split(",")
        assert _services(compose)[name]["env_file"] == "../.env"
    db = _services(compose)["db"]["environment"]
    assert db["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


def test_state_lives_in_named_volumes(compose):
    services = _services(compose)
    assert services["db"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert services["beat"]["volumes"] == ["beat:/data"]
    assert "agent:/data" in services["agent"]["volumes"]
    assert "training:/data/training" in services["worker"]["volumes"]
    assert "training:/data/training" in services["agent"]["volumes"]
    assert "volumes" not in services["web"]  # stateless: any replica serves any request
    assert set(compose["volumes"]) >= {"pgdata", "redisdata", "beat", "agent", "training"}


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.server.hosts.append(self.headers["Host"])
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _run_healthcheck(command: list[str], port: int) -> int:
    """The healthcheck's python command, pointed at `port` instead of the container's 8000."""
    assert command[:3] == ["CMD", "python", "-c"]
    code = command[3].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_web_healthcheck_passes_only_while_readyz_answers_200(compose, status, healthy):
    handler = type("Handler", (_Readyz,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    server.hosts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        command = _services(compose)["web"]["healthcheck"]["test"]
        assert (_run_healthcheck(command, port) == 0) is healthy
        assert (_run_healthcheck(_dockerfile_healthcheck(), port) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()
    assert server.hosts == ["localhost", "localhost"]
    assert "localhost" in _compose(_example_env(**SECRETS, ALLOWED_HOSTS="sb.example.com"))[
        "services"
    ]["web"]["environment"]["ALLOWED_HOSTS"].split(",")


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _dockerfile_healthcheck() -> list[str]:
    (line,) = [line for line in _dockerfile() if line.startswith("HEALTHCHECK ")]
    return ["CMD", *json.loads(line.split(" CMD ", 1)[1])]


def test_dockerfile_runs_as_a_non_root_user_with_the_production_server_command():
    lines = _dockerfile()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert lines.index(next(line for line in lines if line.startswith("USER "))) > max(
        i for i, line in enumerate(lines) if line.startswith("RUN ")
    )
    (command,) = [line.removeprefix("CMD ") for line in lines if line.startswith("CMD ")]
    assert json.loads(command) == ["uvicorn", *uvicorn_args(host="0.0.0.0", port=8000)]
    assert "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBUG=false DATA_DIR=/data" in lines
    # No key is baked in: the build's throwaway Fernet key is generated during the build.
    assert not re.search(r"FIELD_ENCRYPTION_KEY=[A-Za-z0-9_-]{43}=", "\n".join(lines))


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins)."""
    import fnmatch

    ignored = False
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        patterns = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatch(prefix, p) for prefix in prefixes for p in patterns) or any(
            pattern.startswith("**/") and fnmatch.fnmatch(part, pattern[3:]) for part in parts
        ):
            ignored = not negated
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "data/admin-password",
        "data/secret-key",
        "data/switchboard.sqlite3",
        ".git/config",
        ".venv/bin/python",
        "panel/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "tests/panel/test_deploy_files.py",
    ],
)
def test_dockerignore_keeps_secrets_state_and_caches_out_of_the_image(path):
    assert _dockerignored(path)


@pytest.mark.parametrize(
    "path", ["manage.py", "panel/settings.py", "pyproject.toml", "README.md", ".env.example"]
)
def test_dockerignore_keeps_what_the_image_needs(path):
    assert not _dockerignored(path)


def _copy_project(tmp_path: Path, env: dict[str, str]) -> Path:
    """docker/ and .env in a scratch project folder, as `docker compose` would see them."""
    shutil.copytree(ROOT / "docker", tmp_path / "docker")
    (tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return tmp_path


def _docker_compose_config(project: Path) -> subprocess.CompletedProcess:
    if not shutil.which("docker-compose"):
        pytest.skip("issue 19: Debian's docker-compose is not installed (make test installs it)")
    return subprocess.run(
        ["docker-compose", "--env-file", ".env", "-f", "docker/compose.yaml", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_accepts_the_file_with_the_example_env_and_secrets(tmp_path):
    result = _docker_compose_config(_copy_project(tmp_path, _example_env(**SECRETS)))
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["web"]["deploy"]["replicas"] == 2
    assert "ports" not in rendered["services"]["web"]
    assert rendered["services"]["web"]["environment"]["DEBUG"] == "false"


def test_docker_compose_refuses_the_example_env_without_its_secrets(tmp_path):
    result = _docker_compose_config(_copy_project(tmp_path, _example_env()))
    assert result.returncode != 0
    assert "in .env" in result.stderr
    assert not any(value in result.stderr for value in SECRETS.values())


def _haproxy() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(path).exists():
        pytest.skip("issue 19: HAProxy is not installed (make test installs Debian's)")
    return path


def test_haproxy_accepts_the_load_balancer_config():
    result = subprocess.run(
        [_haproxy(), "-c", "-f", str(ROOT / "docker" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def _local_haproxy_config(tmp_path: Path, *, listen: int, backend: int) -> Path:
    """docker/haproxy.cfg on loopback: its port and one replica at `backend` instead of DNS."""
    text = (ROOT / "docker" / "haproxy.cfg").read_text()
    assert "bind :8080" in text and "server-template web 1-20 web:8000" in text
    text = text.replace("bind :8080", f"bind 127.0.0.1:{listen}")
    text = text.replace("server-template web 1-20 web:8000", f"server web1 127.0.0.1:{backend}")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    return config


def _replica(release: asyncio.Event, *, alive: bool = True) -> web.Application:
    """A stand-in web replica: /healthz, an SSE stream that waits for the client, a WebSocket."""

    async def healthz(request):
        assert request.headers["Host"] == "localhost"
        return web.json_response({"status": "ok"}, status=200 if alive else 503)

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.headers["X-Seen-Proto"] = request.headers.get("X-Forwarded-Proto", "")
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        # The second event is sent only once the client has read the first one through
        # the proxy: a buffering proxy would hold the first back and this would time out.
        await asyncio.wait_for(release.wait(), timeout=10)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def socket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/ws/chat/", socket)
    return app


async def _wait_for_port(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def _load_balanced(tmp_path: Path, replica: web.Application):
    """docker/haproxy.cfg's HAProxy on loopback in front of `replica`: a client session to it."""
    haproxy = _haproxy()
    runner = web.AppRunner(replica)
    await runner.setup()
    backend, listen = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", backend).start()
    config = _local_haproxy_config(tmp_path, listen=listen, backend=backend)
    process = await asyncio.create_subprocess_exec(
        haproxy, "-db", "-f", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_for_port(listen)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{listen}") as session:
            yield session
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)
        await runner.cleanup()


async def test_load_balancer_streams_sse_unbuffered_and_upgrades_websockets(tmp_path):
    release = asyncio.Event()
    async with _load_balanced(tmp_path, _replica(release)) as session:
        headers = {"X-Forwarded-Proto": "https"}
        async with session.get("/v1/stream", headers=headers) as response:
            assert response.status == 200
            assert response.headers["X-Seen-Proto"] == "http"  # a client's claim overwritten
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=5)
            assert first == b"data: first\n\n"
            release.set()
            assert await response.content.read() == b"data: [DONE]\n\n"
        async with session.ws_connect("/ws/chat/") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "echo hello"


async def test_load_balancer_stops_sending_requests_to_a_replica_that_fails_its_check(tmp_path):
    async with _load_balanced(tmp_path, _replica(asyncio.Event(), alive=False)) as session:
        # Two failed checks 3 s apart take it out; then HAProxy answers 503 itself.
        for _ in range(150):
            async with session.get("/v1/models") as response:
                status, body = response.status, await response.text()
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503
        assert "No server is available" in body
