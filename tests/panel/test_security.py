"""Safe defaults (issue 11): JSON 404s under API prefixes, security headers everywhere."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from django.test import override_settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


@override_settings(DEBUG=True)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/does-not-exist"),
        ("post", "/v1/nope"),
        ("get", "/api/v1/ai/nothing/here"),
        ("delete", "/api/ai/openai/v1/chat/completions/extra"),
    ],
)
def test_unknown_api_routes_answer_the_json_404_even_with_debug_on(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == {
        "message": f"No route for {method.upper()} {path}.",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


@override_settings(DEBUG=True)
def test_other_unknown_pages_keep_django_s_debug_page(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_an_api_route_without_its_slash_still_redirects(client):
    response = client.get("/api/docs?x=1")
    assert response.status_code == 301
    assert response["Location"] == "/api/docs/?x=1"


HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "same-origin",
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",  # the gateway's fast path, without Django's middleware
        "/v1/chat/completions",
        "/static/admin/css/base.css",  # the static files handler
        "/admin/login/",
        "/api/no-such-route",
        "/healthz",
    ],
)
def test_every_response_carries_the_security_headers(asgi_server, path):
    response = httpx.get(f"{asgi_server.url}{path}", timeout=10)
    assert response.status_code < 500
    for name, value in HEADERS.items():
        assert response.headers.get_list(name) == [value], name
    assert "strict-transport-security" not in response.headers


@pytest.fixture
def behind_tls_proxy(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_SSL_REDIRECT = True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/v1/models", "/admin/login/", "/static/admin/css/base.css"])
def test_https_responses_carry_hsts_and_plain_http_is_redirected(
    asgi_server, behind_tls_proxy, path
):
    secure = httpx.get(
        f"{asgi_server.url}{path}?a=1", headers={"X-Forwarded-Proto": "https"}, timeout=10
    )
    assert secure.status_code < 500
    assert secure.headers["strict-transport-security"] == "max-age=3600; includeSubDomains"

    plain = httpx.get(f"{asgi_server.url}{path}?a=1", timeout=10)
    host = asgi_server.url.removeprefix("http://")
    assert plain.status_code == 301
    assert plain.headers["location"] == f"https://{host}{path}?a=1"
    assert plain.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in plain.headers


@pytest.mark.django_db(transaction=True)
def test_health_probes_over_plain_http_are_not_redirected(asgi_server, behind_tls_proxy):
    assert httpx.get(f"{asgi_server.url}/healthz", timeout=10).status_code == 200


def test_check_deploy_is_clean_in_a_production_configuration(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEBUG", "SECRET_KEY", "FIELD_ENCRYPTION", "SECURE_"))
    }
    env.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="switchboard.example",
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true",
        DATA_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
