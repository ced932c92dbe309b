"""schemathesis against the running server and its own schema, as staff: no 5xx and no
response that violates the schema, on every management operation."""

import subprocess
import sys
from pathlib import Path

import pytest

from accounts.models import Permission
from accounts.services import apikey_create
from ai.instances.services import instance_create
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory
from tests.instances.stand_in_agent import StandInAgent, point_local_agent

MANAGEMENT_PATHS = (
    r"^/api/v1/(ai/(models|upstreams|links|datasets|training)|files|orgs|auth/keys|config|version"
    r"|instances|nodes"
    r"|backends/[a-z-]+/parse-command)"
)
# Revoking or narrowing the key that runs the test would turn the rest of the run into 401s.
OWN_KEY_OPERATIONS = ("v1_auth_keys_destroy", "v1_auth_keys_permissions_update")


@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_management_api_to_its_schema(asgi_server, staff, acme, tmp_path, settings):
    instance_create(name="seed", options={"backend": "command", "command_override": "serve {port}"})
    model = AIModelFactory(name="seed-model")
    UpstreamFactory(model=model, name="seed", api_key="sk-seed")
    ModelLinkFactory(model=model, organisation=acme)
    _, key = apikey_create(user=staff, name="schemathesis", permissions=[Permission.MANAGE])
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "run",
        f"{asgi_server.url}/api/schema/",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--include-path-regex",
        MANAGEMENT_PATHS,
        *[arg for op in OWN_KEY_OPERATIONS for arg in ("--exclude-operation-id", op)],
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        "10",
        "--seed",
        "7",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report-dir",
        str(tmp_path),
    ]
    # Instance writes nudge the node's agent: a stand-in answers (the server runs in-process).
    with StandInAgent(key=settings.INSTANCE_AGENT_KEY) as agent:
        point_local_agent(settings, agent.url)
        result = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
