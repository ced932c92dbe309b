"""Helpers for the django-allauth flows' tests: mail links, sign-in, and TOTP codes.

The TOTP code is computed here from the secret the activation page shows, as an
authenticator app would (RFC 6238 over RFC 4226: HMAC-SHA1, 30-second steps, 6 digits),
so that the tests check allauth's verification against an independent implementation.
"""

import base64
import hashlib
import hmac
import re
import struct
import time

from django.core import mail

PASSWORD = "pw-for-tests"
LINK = re.compile(r"https?://[^/\s]+(/accounts/[^\s]+)")


def totp(secret: str, *, at: float | None = None, step_offset: int = 0) -> str:
    """The 6-digit code for a base32 secret at a time (now), or a step before or after it."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30) + step_offset
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def fresh_totp(secret: str) -> str:
    """The current code, waiting for the next 30-second step when this one is about to end
    (so that the server checks it in the step it was computed for)."""
    left = 30 - time.time() % 30
    if left < 3:
        time.sleep(left + 0.1)
    return totp(secret)


def link_in_last_mail(to: str) -> str:
    """The path of the /accounts/ link in the last mail sent to an address."""
    sent = [m for m in mail.outbox if to in m.to]
    assert sent, f"no mail to {to}"
    match = LINK.search(sent[-1].body)
    assert match, sent[-1].body
    return match.group(1)


def sign_in(client, login: str, password: str = PASSWORD, **kwargs):
    return client.post("/accounts/login/", {"login": login, "password": password}, **kwargs)


def signed_in_user(client):
    """The user the client's session belongs to, or None."""
    from django.contrib.auth import get_user

    class Request:
        session = client.session

    user = get_user(Request())
    return user if user.is_authenticated else None
