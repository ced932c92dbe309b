import pytest
from django.http import HttpResponse
from django.test import override_settings
from django.urls import path

from panel import errors


def _raise_model_not_found(request):
    raise errors.ModelNotFound(
        "No active deployment found for model 'mistral'",
        param="model",
        available_models=["gemma3:7b"],
    )


async def _raise_rate_limited(request):
    raise errors.RateLimited(headers={"Retry-After": "7"})


def _crash(request):
    raise RuntimeError("boom: secret internals")


def _feature_disabled(request):
    raise errors.FeatureDisabled()


def _html(request):
    return HttpResponse("ok")


urlpatterns = [
    path("api/not-found", _raise_model_not_found),
    path("v1/limited", _raise_rate_limited),
    path("api/crash", _crash),
    path("api/ai/chat", _feature_disabled),
    path("page", _html),
]
handler404 = "panel.errors.handler404"
handler500 = "panel.errors.handler500"

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


def test_it_renders_an_api_error_as_the_openai_envelope_with_extra_fields(client):
    response = client.get("/api/not-found")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "No active deployment found for model 'mistral'",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
        "available_models": ["gemma3:7b"],
    }


async def test_it_renders_errors_from_async_views_with_their_headers(async_client):
    response = await async_client.get("/v1/limited")
    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_it_answers_an_unknown_api_route_with_a_json_404(client):
    response = client.get("/api/does-not-exist")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_it_answers_an_unknown_v1_route_with_a_json_404(client):
    response = client.post("/v1/nope", data="{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@override_settings(DEBUG=False)
def test_it_hides_a_crash_behind_a_json_500_on_api_routes(client, caplog):
    client.raise_request_exception = False
    response = client.get("/api/crash")
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["type"] == "server_error"
    assert "boom" not in response.content.decode()
    assert "boom: secret internals" in caplog.text


def test_it_keeps_the_panel_feature_disabled_shape(client):
    response = client.get("/api/ai/chat")
    assert response.status_code == 503
    assert response.json() == {"error": "feature_disabled"}


@pytest.mark.parametrize(
    ("detail", "param", "message"),
    [
        ({"name": ["This field is required."]}, "name", "This field is required."),
        ({"config": {"context_window": ["Too big."]}}, "config.context_window", "Too big."),
        ({"non_field_errors": ["Bad pair."]}, None, "Bad pair."),
        (["Plain list."], None, "Plain list."),
    ],
)
def test_it_names_the_failing_field_of_a_validation_error(detail, param, message):
    from rest_framework.exceptions import ValidationError

    error = errors.from_drf(ValidationError(detail))
    assert (error.status_code, error.param, error.message) == (400, param, message)
