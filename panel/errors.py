"""The API error hierarchy and the one place that renders it.

Code anywhere raises an ``ApiError`` subclass; DRF's exception handler, the
``ApiErrorMiddleware`` (plain and async views) and the 404/500 handlers under
API prefixes render it as the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}`` plus any extra fields
(beside ``error`` and inside it).
"""

from __future__ import annotations

import logging
from enum import StrEnum

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/", "/llama-cpp/")


class ErrorCode(StrEnum):
    """Every ``code`` an API error carries; the values are the strings clients see."""

    # The request itself
    INVALID_REQUEST = "invalid_request"
    INVALID_VALUE = "invalid_value"
    INVALID_JSON = "invalid_json"
    REQUEST_TOO_LARGE = "request_too_large"
    BAD_HOST = "bad_host"
    INVALID_MODEL_TYPE = "invalid_model_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # Who may do what
    INVALID_API_KEY = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
    INSUFFICIENT_PERMISSIONS = "insufficient_permissions"
    CSRF_FAILED = "csrf_failed"
    KEY_REVOKED = "key_revoked"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    TIER_REQUIRED = "tier_required"
    # Nothing by that name, or not for this caller
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    CONVERSATION_NOT_FOUND = "conversation_not_found"
    DEPLOYMENT_NOT_FOUND = "deployment_not_found"
    USER_NOT_FOUND = "user_not_found"
    INSTANCE_NOT_FOUND = "instance_not_found"
    # Local model instances
    INVALID_NAME = "invalid_name"
    INSTANCE_NOT_RUNNING = "instance_not_running"
    INSTANCE_QUOTA_EXCEEDED = "instance_quota_exceeded"
    # Training
    NO_ARTIFACT = "no_artifact"
    ARTIFACT_DEPLOYED = "artifact_deployed"
    JOB_FINISHED = "job_finished"
    AGENT_UNAVAILABLE = "agent_unavailable"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    # Organisations and their members
    LAST_OWNER = "last_owner"
    AMBIGUOUS_EMAIL = "ambiguous_email"
    ALREADY_MEMBER = "already_member"
    # Limits and money
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    QUOTA_EXCEEDED = "quota_exceeded"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    # Availability
    SERVICE_UNAVAILABLE = "service_unavailable"
    MODEL_NOT_AVAILABLE = "model_not_available"
    FEATURE_DISABLED = "feature_disabled"
    UPSTREAM_ERROR = "upstream_error"
    INTERNAL_ERROR = "internal_error"


# OpenAI's error ``type`` follows the status; a class may still name its own.
TYPES = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """Base of every error an API route returns; carries its own status and code.

    A subclass names them in its bases: ``class NotFound(ApiError, status=404,
    code=ErrorCode.NOT_FOUND)``; its ``type`` follows from the status (TYPES).
    """

    status_code = 400
    type = "invalid_request_error"
    # An ErrorCode; DRF's own codes (``from_drf``) pass through as plain strings.
    code: str | None = None
    default_message = "Invalid request."

    def __init_subclass__(cls, *, status: int | None = None, code: ErrorCode | None = None):
        super().__init_subclass__()
        if status is not None:
            cls.status_code = status
            if "type" not in cls.__dict__:
                cls.type = TYPES.get(status, "invalid_request_error")
        if code is not None:
            cls.code = code

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra,
    ):
        self.message = message or self.default_message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.message)

    def envelope(self) -> dict:
        """The OpenAI envelope; extra fields go beside ``error`` and inside it.

        Beside it, where the seeds document them; inside it too, because the SDKs
        keep only the ``error`` object on their typed errors (``exc.body``).
        """
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        error.update(self.extra)
        return {"error": error, **self.extra}


class InvalidRequest(ApiError, code=ErrorCode.INVALID_REQUEST):
    default_message = "Invalid request."


class InvalidModelType(ApiError, code=ErrorCode.INVALID_MODEL_TYPE):
    default_message = "This model cannot be used with this endpoint."


class AuthenticationFailed(ApiError, status=401, code=ErrorCode.INVALID_API_KEY):
    default_message = "Incorrect or missing API key."


class PermissionDenied(ApiError, status=403, code=ErrorCode.PERMISSION_DENIED):
    default_message = "You do not have permission to do this."


class InsufficientQuota(ApiError, status=402, code=ErrorCode.INSUFFICIENT_QUOTA):
    default_message = "Insufficient balance."


class NotFound(ApiError, status=404, code=ErrorCode.NOT_FOUND):
    default_message = "Not found."


class ModelNotFound(NotFound, code=ErrorCode.MODEL_NOT_FOUND):
    default_message = "The model does not exist or you do not have access to it."


class PayloadTooLarge(ApiError, status=413, code=ErrorCode.REQUEST_TOO_LARGE):
    """A request body over DATA_UPLOAD_MAX_MEMORY_SIZE, or an upload over its own limit (a
    training dataset over TRAINING_DATASET_MAX_BYTES)."""

    default_message = "The upload is too large."


class MethodNotAllowed(ApiError, status=405, code=ErrorCode.METHOD_NOT_ALLOWED):
    default_message = "Method not allowed."


class RateLimited(ApiError, status=429, code=ErrorCode.RATE_LIMIT_EXCEEDED):
    default_message = "Rate limit exceeded."


class UpstreamRateLimited(RateLimited):
    """Every upstream of the model refused with its own 429: not the caller's limit.

    Same status and code for API clients; the chat page tells it apart from the caller's
    own limits."""

    default_message = "Every upstream of this model is rate limited; retry later."


class ServiceUnavailable(ApiError, status=503, code=ErrorCode.SERVICE_UNAVAILABLE):
    default_message = "The service is temporarily unavailable."


class DependencyUnavailable(ServiceUnavailable):
    """The database or Redis that this request needs is unreachable; retry shortly."""

    default_message = "The service is temporarily unavailable; retry shortly."
    retry_after = 5

    def __init__(self, message: str | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(self.retry_after))


class ModelNotAvailable(ServiceUnavailable, code=ErrorCode.MODEL_NOT_AVAILABLE):
    type = "invalid_request_error"
    default_message = "The model has no available upstream."


class ModelStarting(ModelNotAvailable):
    """The model's only instances are starting (or restarting): it will answer soon."""

    default_message = "The model's instance is starting."


class InstanceNotRunning(ServiceUnavailable, code=ErrorCode.INSTANCE_NOT_RUNNING):
    default_message = "The instance is not running."


class InstanceQuotaExceeded(ApiError, status=409, code=ErrorCode.INSTANCE_QUOTA_EXCEEDED):
    """An instance quota (an organisation's, or INSTANCE_MAX_INSTANCES) refuses a create or start."""

    default_message = "An instance quota refuses this."


class KeyRevoked(ApiError, status=409, code=ErrorCode.KEY_REVOKED):
    """A revoked API key stays revoked: it cannot be rotated back to life."""

    default_message = "This API key is revoked; create a new key instead."


class NoArtifact(ApiError, status=409, code=ErrorCode.NO_ARTIFACT):
    """A training job left nothing to deploy (it failed, or has not finished)."""

    default_message = "There is no trained artifact to deploy."


class ArtifactDeployed(ApiError, status=409, code=ErrorCode.ARTIFACT_DEPLOYED):
    """A trained artifact is served by one model at most."""

    default_message = "The artifact is deployed already."


class JobFinished(ApiError, status=409, code=ErrorCode.JOB_FINISHED):
    """A training job that has already ended cannot be cancelled."""

    default_message = "The training job has already finished."


class TrainingQuotaExceeded(RateLimited, code=ErrorCode.QUOTA_EXCEEDED):
    """An organisation's training quota (jobs at once, minutes a month) refuses a start."""

    default_message = "A training quota refuses this job."


class AgentUnavailable(ServiceUnavailable, code=ErrorCode.AGENT_UNAVAILABLE):
    """The instance agent of a node did not answer (down, or not started)."""

    default_message = "The instance agent is not answering."


class BackendUnavailable(ServiceUnavailable, code=ErrorCode.BACKEND_UNAVAILABLE):
    """A backend's program (llama-server) is not installed here, failed or did not answer."""

    default_message = "The backend's program is not available."


class UpstreamError(ApiError, status=502, code=ErrorCode.UPSTREAM_ERROR):
    default_message = "The upstream failed to answer."


class InternalError(ApiError, status=500, code=ErrorCode.INTERNAL_ERROR):
    default_message = "The server had an error while processing your request."


class FeatureDisabled(Exception):
    """The AI feature flag is off; panel routes answer with their documented shape."""

    status_code = 503

    def envelope(self) -> dict:
        return {"error": ErrorCode.FEATURE_DISABLED}


def error_response(exc: ApiError | FeatureDisabled) -> JsonResponse:
    response = JsonResponse(exc.envelope(), status=exc.status_code)
    for name, value in getattr(exc, "headers", {}).items():
        response[name] = value
    return response


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


_DRF_MAP: list[tuple[type[Exception], type[ApiError]]] = [
    (drf_exceptions.NotAuthenticated, AuthenticationFailed),
    (drf_exceptions.AuthenticationFailed, AuthenticationFailed),
    (drf_exceptions.PermissionDenied, PermissionDenied),
    (drf_exceptions.NotFound, NotFound),
    (drf_exceptions.MethodNotAllowed, MethodNotAllowed),
    (drf_exceptions.Throttled, RateLimited),
    (drf_exceptions.UnsupportedMediaType, InvalidRequest),
    (drf_exceptions.ParseError, InvalidRequest),
]


def _first_error(detail, prefix: str = "") -> tuple[str | None, str]:
    """The first field name (dotted for nested) and message in a DRF error detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            # ListField errors are keyed by index: 0 is a name too.
            name = str(key) if key != "non_field_errors" else ""
            param, message = _first_error(value, f"{prefix}.{name}" if prefix and name else name)
            return param or None, message
    if isinstance(detail, list) and detail:
        if all(isinstance(item, dict) for item in detail):
            # A list of nested objects: valid ones are empty; name the first failing index.
            for index, item in enumerate(detail):
                if item:
                    return _first_error(item, f"{prefix}.{index}" if prefix else str(index))
        return _first_error(detail[0], prefix)
    return prefix or None, str(detail)


def from_drf(exc: drf_exceptions.APIException) -> ApiError:
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message = _first_error(exc.detail)
        return InvalidRequest(message, param=param, code=ErrorCode.INVALID_VALUE)
    for drf_class, api_class in _DRF_MAP:
        if isinstance(exc, drf_class):
            return api_class(str(exc.detail))
    error = ApiError(str(exc.detail), code=exc.default_code)
    error.status_code = exc.status_code
    return error


def _django_detail(exc: DjangoValidationError) -> dict | list:
    """A model's ValidationError (from ``full_clean`` in a service) as DRF error detail."""
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if name == NON_FIELD_ERRORS else name): messages
            for name, messages in exc.message_dict.items()
        }
    return exc.messages


def drf_exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every DRF view answers in the OpenAI envelope."""
    if isinstance(exc, Http404):
        exc = NotFound()
    if isinstance(exc, DjangoValidationError):
        exc = drf_exceptions.ValidationError(_django_detail(exc))
    if isinstance(exc, drf_exceptions.APIException):
        exc = from_drf(exc)
    if isinstance(exc, ApiError | FeatureDisabled):
        return Response(exc.envelope(), status=exc.status_code, headers=getattr(exc, "headers", {}))
    return None


class ApiErrorMiddleware:
    """Renders ApiError raised by plain (sync or async) views; hides 500s on API paths."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exc):
        if isinstance(exc, ApiError | FeatureDisabled):
            return error_response(exc)
        if is_api_path(request.path) and not isinstance(exc, Http404):
            logger.exception("Unhandled error on %s", request.path)
            return error_response(InternalError())
        return None


def api_route_not_found(request, *args, **kwargs):
    """The last URL pattern under API prefixes: the JSON 404 even with DEBUG on.

    Django answers an unmatched URL with its HTML debug page when DEBUG is on,
    before ``handler404``; matching every remaining API path here avoids that.
    It keeps APPEND_SLASH's redirect, which CommonMiddleware no longer makes
    once every API path matches something.
    """
    from django.conf import settings
    from django.http import HttpResponsePermanentRedirect
    from django.urls import Resolver404, resolve

    path = request.path_info
    if settings.APPEND_SLASH and not path.endswith("/") and request.method in ("GET", "HEAD"):
        try:
            match = resolve(f"{path}/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_route_not_found:
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    return error_response(NotFound(f"No route for {request.method} {request.path}."))


def handler404(request, exception=None):
    if is_api_path(request.path):
        return error_response(NotFound(f"No route for {request.method} {request.path}."))
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler400(request, exception=None):
    if is_api_path(request.path):
        return error_response(InvalidRequest("Bad request."))
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request, exception=None):
    if is_api_path(request.path):
        return error_response(PermissionDenied())
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def handler500(request):
    if is_api_path(request.path):
        return error_response(InternalError())
    from django.views.defaults import server_error

    return server_error(request)
