"""/api/v1/config and /version, the OpenAPI schema and Swagger UI, and route precedence."""

from django.contrib.staticfiles import finders
from django.urls import resolve

from ai.api import openai
from ai.api.fastpath import is_fast_path
from tests.api.conftest import as_key


def test_it_shows_staff_the_config_without_secrets(api, keys, settings):
    settings.METRICS_TOKEN = "metrics-token-secret"
    response = as_key(api, keys["staff"]).get("/api/v1/config")
    assert response.status_code == 200
    body = response.json()
    assert body["metrics_enabled"] is True and body["database"] in ("sqlite", "postgresql")
    text = response.content.decode()
    for secret in (settings.SECRET_KEY, *settings.FIELD_ENCRYPTION_KEYS, "metrics-token-secret"):
        assert secret not in text
    assert "://" not in text


def test_it_shows_the_instance_settings_and_never_the_agent_key_url_or_paths(api, keys, settings):
    settings.INSTANCE_PORT_RANGE = "9000-9099"
    settings.INSTANCE_MAX_RUNNING = 2
    settings.INSTANCE_AGENT_KEY = "agent-key-never-in-the-config"
    response = as_key(api, keys["staff"]).get("/api/v1/config")
    instances = response.json()["instances"]
    assert instances == {
        "node": settings.INSTANCE_NODE,
        "max_instances": settings.INSTANCE_MAX_INSTANCES,
        "max_running_instances": 2,
        "on_demand_start_timeout": settings.INSTANCE_ON_DEMAND_START_TIMEOUT,
        "port_range": [9000, 9099],
        "timeout_check_interval": settings.INSTANCE_TIMEOUT_CHECK_INTERVAL,
        "poll_interval": settings.INSTANCE_POLL_INTERVAL,
        "start_queue": settings.INSTANCE_START_QUEUE,
        "min_residency": settings.INSTANCE_MIN_RESIDENCY,
        "activity_interval": settings.INSTANCE_ACTIVITY_INTERVAL,
        "stop_grace": settings.INSTANCE_STOP_GRACE,
        "log_max_bytes": settings.INSTANCE_LOG_MAX_BYTES,
        "log_backups": settings.INSTANCE_LOG_BACKUPS,
    }
    text = response.content.decode()
    for hidden in ("agent-key-never-in-the-config", str(settings.INSTANCE_LOG_DIR), "9201"):
        assert hidden not in text
    for persona in ("alice", "manager"):
        assert as_key(api, keys[persona]).get("/api/v1/config").status_code == 403


def test_it_tells_anyone_the_version(api):
    assert set(api.get("/api/v1/version").json()) == {"version"}


def test_it_keeps_the_openai_routes_on_the_fast_path():
    assert resolve("/api/v1/models").func.openai_view is openai.models_list
    assert is_fast_path("/api/v1/models") and is_fast_path("/api/v1/ai/chat/completions")
    assert not is_fast_path("/api/v1/ai/models")


def test_it_serves_an_openapi_schema_of_every_api(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in (
        "/api/v1/ai/models",
        "/api/v1/ai/models/deploy",
        "/api/v1/ai/models/{id}/config",
        "/api/v1/auth/keys/{id}/permissions",
        "/api/v1/orgs/{org_slug}/members/{user_id}",
        "/api/v1/config",
        "/v1/chat/completions",
        "/api/v1/models/{model}",
        "/api/v1/ai/inference",
        "/api/ai/usage",
        "/v1/messages",
        "/api/ai/anthropic/v1/messages/count_tokens",
        "/api/ai/openai/models",
    ):
        assert path in paths, path
    upstream = schema["components"]["schemas"]["Upstream"]["properties"]
    assert "api_key" not in upstream and "has_api_key" in upstream
    assert "api_key" in schema["components"]["schemas"]["UpstreamRequest"]["properties"]


def test_it_serves_swagger_ui_from_local_assets(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert (
        '<script src="/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js">'
        in html
    )
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
