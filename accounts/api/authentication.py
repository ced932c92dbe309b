"""DRF authentication for the management API: an API key (Bearer or X-API-Key), or the
browser session."""

from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from panel.errors import AuthenticationFailed, ErrorCode, PermissionDenied

from ..authentication import CSRF_FAILED, key_for_headers
from ..services import apikey_touch


class APIKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sb-…`` or ``X-API-Key: sb-…``: a usable key (not revoked or
    expired, active owner)."""

    def authenticate(self, request):
        try:
            key = key_for_headers(request.headers)
        except AuthenticationFailed as error:
            # DRF's own class, so that DRF marks the request unauthenticated.
            raise exceptions.AuthenticationFailed(error.message) from None
        if key is None:
            return None
        apikey_touch(key=key)
        return key.user, key

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication (CSRF enforced for a browser's unsafe methods), whose
    CSRF refusal says how scripts authenticate instead (an API key)."""

    def enforce_csrf(self, request):
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied:
            raise PermissionDenied(CSRF_FAILED, code=ErrorCode.CSRF_FAILED) from None


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = APIKeyAuthentication
    name = ["bearerAuth", "apiKeyAuth"]

    def get_security_requirement(self, auto_schema):
        return [{"bearerAuth": []}, {"apiKeyAuth": []}]

    def get_security_definition(self, auto_schema):
        described = "An API key (`sb-…`); management routes need its `manage` permission."
        return [
            {"type": "http", "scheme": "bearer", "description": described},
            {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": described},
        ]


class SessionAuthenticationScheme(SessionScheme):
    target_class = SessionAuthentication
