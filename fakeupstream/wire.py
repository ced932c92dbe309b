"""The fake upstream's wire format: compact JSON bytes and the OpenAI error envelope.

Owns how an error looks on the wire (type and code by status) and ``BadRequest``, the
exception a handler raises for a 400 that names the offending field.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


class BadRequest(Exception):
    """A request the fake upstream refuses with 400, naming the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def json_response(obj: Any) -> web.Response:
    return web.Response(body=dumps(obj), content_type="application/json")


def error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    """An OpenAI error envelope; type and code default to what OpenAI sends for ``status``."""
    default_type, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    body = {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return web.Response(status=status, body=dumps(body), content_type="application/json")


_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    """An error in Anthropic's shape (``error_response``'s signature; param and code unused)."""
    kind = _ANTHROPIC_KINDS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(status=status, body=dumps(body), content_type="application/json")


def bad_request(exc: BadRequest, errors: Any = error_response) -> web.Response:
    return errors(400, exc.message, type_="invalid_request_error", param=exc.param, code=exc.code)


def close_connection(request: web.Request) -> None:
    """Drop the client's connection without another byte (a fault, or a client gone)."""
    transport = request.transport
    if transport is not None:
        transport.close()
