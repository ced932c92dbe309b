"""Who is calling: an API key (hashed lookup, cached) or the browser session.

A key comes as ``Authorization: Bearer <key>`` or as ``X-API-Key: <key>`` (seed 003's
security definition); ``key_token`` reads both. ``key_for_headers`` (the management
API's DRF authentication) and ``akey_for_headers`` (the gateway's ``authenticate``)
are the one way from a request's headers to a usable key; they differ only in where
the key comes from (the row, or its cached snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from django.conf import settings
from django.contrib.auth import aget_user
from django.middleware.csrf import CsrfViewMiddleware

from panel.errors import AuthenticationFailed, ErrorCode, PermissionDenied

from .models import APIKey
from .selectors import KeyInfo, apikey_verify, key_info_verify

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MALFORMED_HEADER = "The Authorization header must be 'Bearer <API key>'."
INCORRECT_KEY = "Incorrect API key provided."
TWO_KEYS = (
    "The Authorization and X-API-Key headers carry different API keys; send one key, "
    "in either header."
)
# A browser session's POST without its CSRF token: most often a script that copied a
# session cookie (seed 000's curl examples do); it should use an API key instead.
CSRF_FAILED = (
    "CSRF verification failed: a browser session must send its CSRF token (X-CSRFToken "
    "header). Scripts should use an API key instead of a session cookie: send "
    "'Authorization: Bearer <API key>' (create one with POST /api/v1/auth/keys or in the admin)."
)
NO_KEY = (
    "You didn't provide an API key. Send 'Authorization: Bearer <API key>' "
    "or 'X-API-Key: <API key>'."
)


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller; ``key`` is None for a browser session (full permissions)."""

    user_id: int
    key: KeyInfo | None

    def require(self, permission: str) -> None:
        if self.key is not None and permission not in self.key.permissions:
            raise PermissionDenied(
                f"This API key lacks the '{permission}' permission.",
                code="insufficient_permissions",
            )


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without a header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(MALFORMED_HEADER)
    return token.strip()


def key_token(headers) -> str | None:
    """The API key a request's headers carry (Bearer or X-API-Key); None without one.

    Both headers are accepted; given together they must carry the same key.
    """
    bearer = bearer_token(headers.get("Authorization"))
    api_key = (headers.get("X-API-Key") or "").strip() or None
    if bearer is not None and api_key is not None and bearer != api_key:
        raise AuthenticationFailed(TWO_KEYS)
    return bearer or api_key


def key_for_headers(headers) -> APIKey | None:
    """The usable key a request's headers carry, with its owner; None without one."""
    token = key_token(headers)
    return None if token is None else _found(apikey_verify(plain=token))


async def akey_for_headers(headers) -> KeyInfo | None:
    """The same for the request path: the key's cached snapshot."""
    token = key_token(headers)
    return None if token is None else _found(await key_info_verify(plain=token))


def _found(key):
    if key is None:
        raise AuthenticationFailed(INCORRECT_KEY)
    return key


async def authenticate(request, *, permission: str) -> Identity:
    """The caller of an API request, holding ``permission``; raises 401/403 otherwise."""
    key = await akey_for_headers(request.headers)
    if key is not None:
        identity = Identity(user_id=key.user_id, key=key)
    else:
        user = await _session_user(request)
        if not user.is_authenticated:
            raise AuthenticationFailed(NO_KEY)
        if request.method not in SAFE_METHODS:
            _check_csrf(request)
        identity = Identity(user_id=user.pk, key=None)
    identity.require(permission)
    return identity


async def _session_user(request):
    """The session's user; loads the session itself on the fast path (no middleware)."""
    if not hasattr(request, "session"):
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    return await aget_user(request)


def _check_csrf(request) -> None:
    # The API views are csrf_exempt so that key-authenticated scripts need no
    # token; a browser session must still carry one.
    middleware = CsrfViewMiddleware(lambda r: None)
    if "CSRF_COOKIE" not in request.META:
        middleware.process_request(request)
    failure = middleware.process_view(request, None, (), {})
    if failure is not None:
        raise PermissionDenied(CSRF_FAILED, code=ErrorCode.CSRF_FAILED)
