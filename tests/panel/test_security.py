"""Safe defaults (issue 11): JSON 404s under API prefixes, security headers everywhere."""

import pytest
from django.test import override_settings

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
