"""DRF authentication for the management API: a Bearer API key, or the browser session."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from panel.errors import AuthenticationFailed

from ..authentication import key_for_header
from ..services import apikey_touch


class APIKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sb-…``: a usable key (not revoked or expired, active owner)."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        try:
            key = key_for_header(header)
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


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = APIKeyAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`sb-…`); management routes need its `manage` permission.",
        }
