"""DRF authentication for the management API: a Bearer API key, or the browser session."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from ..services import apikey_touch, apikey_verify


class APIKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sb-…``: a usable key (not revoked or expired, active owner)."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise exceptions.AuthenticationFailed(
                "The Authorization header must be 'Bearer <API key>'."
            )
        key = apikey_verify(plain=token.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("Incorrect API key provided.")
        apikey_touch(key=key)
        return key.user, key

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="api"'


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = APIKeyAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`sb-…`); management routes need its `manage` permission.",
        }
