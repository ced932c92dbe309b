"""Who is calling: a Bearer API key (hashed lookup, cached) or the browser session."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from django.conf import settings
from django.contrib.auth import aget_user
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from panel.errors import AuthenticationFailed, PermissionDenied

from .models import hash_key, is_well_formed_key

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller; ``key`` is None for a browser session (full permissions)."""

    user_id: int
    key: object | None  # ai.selectors.KeyInfo

    def require(self, permission: str) -> None:
        if self.key is not None and permission not in self.key.permissions:
            raise PermissionDenied(
                f"This API key lacks the '{permission}' permission.",
                code="insufficient_permissions",
            )


def _bearer(request) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("The Authorization header must be 'Bearer <API key>'.")
    return token.strip()


async def authenticate(request, *, permission: str) -> Identity:
    """The caller of an API request, holding ``permission``; raises 401/403 otherwise."""
    from ai.selectors import key_info_get

    token = _bearer(request)
    if token is not None:
        key = await key_info_get(hash_key(token)) if is_well_formed_key(token) else None
        if key is None or not key.is_usable(timezone.now()):
            raise AuthenticationFailed("Incorrect API key provided.")
        identity = Identity(user_id=key.user_id, key=key)
    else:
        user = await _session_user(request)
        if not user.is_authenticated:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send 'Authorization: Bearer <API key>'."
            )
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
        raise PermissionDenied("CSRF verification failed.", code="csrf_failed")
