import json

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
            # Inside the error object too: the SDKs' typed errors keep only that object.
            "available_models": ["gemma3:7b"],
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


# What each class answers: OpenAI's status, type and code, and the code is an ErrorCode.
ENVELOPES = [
    (errors.InvalidRequest, 400, "invalid_request_error", "invalid_request"),
    (errors.InvalidModelType, 400, "invalid_request_error", "invalid_model_type"),
    (errors.AuthenticationFailed, 401, "authentication_error", "invalid_api_key"),
    (errors.InsufficientQuota, 402, "insufficient_quota", "insufficient_quota"),
    (errors.PermissionDenied, 403, "permission_error", "permission_denied"),
    (errors.NotFound, 404, "invalid_request_error", "not_found"),
    (errors.ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (errors.MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (errors.PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
    (errors.RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (errors.UpstreamRateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (errors.InternalError, 500, "server_error", "internal_error"),
    (errors.UpstreamError, 502, "upstream_error", "upstream_error"),
    (errors.ServiceUnavailable, 503, "service_unavailable", "service_unavailable"),
    (errors.DependencyUnavailable, 503, "service_unavailable", "service_unavailable"),
    (errors.InstanceNotRunning, 503, "service_unavailable", "instance_not_running"),
    (errors.AgentUnavailable, 503, "service_unavailable", "agent_unavailable"),
    (errors.BackendUnavailable, 503, "service_unavailable", "backend_unavailable"),
    (errors.InstanceQuotaExceeded, 409, "invalid_request_error", "instance_quota_exceeded"),
    (errors.JobFinished, 409, "invalid_request_error", "job_finished"),
    (errors.NoArtifact, 409, "invalid_request_error", "no_artifact"),
    (errors.ArtifactDeployed, 409, "invalid_request_error", "artifact_deployed"),
    (errors.TrainingQuotaExceeded, 429, "rate_limit_error", "quota_exceeded"),
    (errors.KeyRevoked, 409, "invalid_request_error", "key_revoked"),
    (errors.ModelNotAvailable, 503, "invalid_request_error", "model_not_available"),
    (errors.ModelStarting, 503, "invalid_request_error", "model_not_available"),
]


def _all_subclasses(cls) -> set:
    return {sub for child in cls.__subclasses__() for sub in (child, *_all_subclasses(child))}


def test_every_error_class_is_listed_with_what_it_answers():
    assert {row[0] for row in ENVELOPES} == _all_subclasses(errors.ApiError)


@pytest.mark.parametrize(("error_class", "status", "type_", "code"), ENVELOPES)
def test_each_error_class_answers_its_status_type_and_code_as_plain_json(
    error_class, status, type_, code
):
    response = errors.error_response(error_class())
    assert response.status_code == status
    error = json.loads(response.content)["error"]
    assert (error["type"], error["code"]) == (type_, code)
    assert isinstance(error_class.code, errors.ErrorCode)
