"""What the fake upstream received: the request log behind ``/_fake/requests``.

Owns the per-app log (the last 100 requests) and how a credential is recorded: never in
the clear, only as a sha256 prefix that tests compare with ``auth_fingerprint``.
"""

from __future__ import annotations

import collections
import hashlib
import time
from typing import Any

from aiohttp import web

MAX_RECORDED = 100
_SENSITIVE_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})

_RECORDS = web.AppKey("fake_records", collections.deque)


def auth_fingerprint(value: str) -> str:
    """The sha256 prefix recorded for a credential (use it to compare in tests)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def _auth_record(value: str | None) -> dict[str, Any]:
    if value is None:
        return {"present": False, "scheme": None, "sha256_prefix": None}
    scheme, _, credential = value.partition(" ")
    if not credential:
        scheme, credential = "", value
    return {
        "present": True,
        "scheme": scheme or None,
        # fingerprint of the credential (after "Bearer "), and of the whole header value
        "sha256_prefix": auth_fingerprint(credential.strip()),
        "value_sha256_prefix": auth_fingerprint(value),
    }


class Record:
    """A received request; rendered to JSON only when ``/_fake/requests`` is read."""

    __slots__ = ("time", "method", "path", "query", "headers", "body", "raw", "faults", "peer")

    def __init__(self, request: web.Request, body: Any, raw: bytes | None) -> None:
        self.time = time.time()
        self.method = request.method
        self.path = request.path
        self.query = request.query_string
        self.headers = request.headers  # immutable proxy: cheap to keep
        self.body = body
        self.raw = raw if body is None and raw else None
        self.faults: dict[str, Any] | None = None
        # The client's address and port: one connection kept alive shows one peer.
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peer = f"{peer[0]}:{peer[1]}" if peer else None

    def as_dict(self) -> dict[str, Any]:
        headers = {}
        auth = None
        for key, value in self.headers.items():
            lowered = key.lower()
            if lowered == "authorization":
                auth = value
            elif lowered in _SENSITIVE_HEADERS:
                headers[key] = "sha256:" + auth_fingerprint(value)
            else:
                headers[key] = value
        entry: dict[str, Any] = {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "authorization": _auth_record(auth),
            "json": self.body,
            "faults": self.faults,
            "peer": self.peer,
        }
        if self.raw is not None:
            entry["raw_body"] = self.raw[:4096].decode("utf-8", "replace")
        return entry


def setup(app: web.Application) -> None:
    app[_RECORDS] = collections.deque(maxlen=MAX_RECORDED)


def record(request: web.Request, body: Any, raw: bytes | None) -> Record:
    entry = Record(request, body, raw)
    request.app[_RECORDS].append(entry)
    return entry


def snapshot(app: web.Application) -> list[dict[str, Any]]:
    """The recorded requests as JSON-ready dicts, oldest first."""
    return [r.as_dict() for r in app[_RECORDS]]


def clear(app: web.Application) -> None:
    app[_RECORDS].clear()
