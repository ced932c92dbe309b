"""Security headers on every HTTP response, and the HTTPS redirect, at the ASGI edge.

Django's SecurityMiddleware and XFrameOptionsMiddleware cover only what goes
through Django's middleware; the gateway's fast path (ai.api.fastpath) and the
static files handler skip it. This wrapper sits in front of Django and the
static files and adds, from a list built once per settings change, each header
a response does not already carry: nosniff, X-Frame-Options, CSP
frame-ancestors, Referrer-Policy, Cross-Origin-Opener-Policy and, on HTTPS,
HSTS. The fast path does the same itself (``redirect_target``,
``missing_headers``), without a wrapper around each ``send``.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http.request import split_domain_port, validate_host

from panel.conf import hot

_headers: dict[bool, list[tuple[bytes, bytes]]] = {}


def _build(secure: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
        (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()),
    ]
    if secure and settings.SECURE_HSTS_SECONDS:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append((b"strict-transport-security", value.encode()))
    return headers


def security_headers(*, secure: bool) -> list[tuple[bytes, bytes]]:
    """The headers every response carries (HSTS only on a secure request)."""
    headers = _headers.get(secure)
    if headers is None:
        headers = _headers[secure] = _build(secure)
    return headers


@receiver(setting_changed)
def _forget(**kwargs) -> None:
    _headers.clear()


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def is_secure(scope) -> bool:
    """As Django's ``request.is_secure()``: the proxy's header when configured, else the scheme."""
    proxy = hot.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, secure_value = proxy
        name = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        value = _header(scope, name)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "https"


def missing_headers(headers, *, secure: bool) -> list[tuple[bytes, bytes]]:
    """The security headers that a response's (name, value) byte pairs do not set."""
    present = {name.lower() for name, _ in headers}
    return [header for header in security_headers(secure=secure) if header[0] not in present]


def redirect_target(scope) -> str | None:
    """The https:// URL to send a plain-HTTP request to, as SecurityMiddleware would."""
    path = scope["path"]
    if any(re.search(pattern, path.lstrip("/")) for pattern in settings.SECURE_REDIRECT_EXEMPT):
        return None
    host = settings.SECURE_SSL_HOST or _header(scope, b"host") or ""
    domain, _ = split_domain_port(host)
    if not settings.SECURE_SSL_HOST and not (
        domain and validate_host(domain, settings.ALLOWED_HOSTS)
    ):
        return None  # Django answers a host it does not serve with its own 400.
    query = scope.get("query_string", b"").decode("latin-1")
    return f"https://{host}{path}" + (f"?{query}" if query else "")


class SecurityHeadersMiddleware:
    """ASGI middleware for HTTP: the HTTPS redirect, then the security headers."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        secure = is_secure(scope)
        if settings.SECURE_SSL_REDIRECT and not secure:
            target = redirect_target(scope)
            if target is not None:
                return await send_redirect(send, target)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                missing = missing_headers(headers, secure=secure)
                if missing:
                    message = {**message, "headers": [*headers, *missing]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


async def send_redirect(send, target: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 301,
            "headers": [
                (b"location", target.encode("latin-1")),
                (b"content-length", b"0"),
                *security_headers(secure=False),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
