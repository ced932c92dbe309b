"""What every AI route shares: feature flag, authentication, errors, request ids."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps

from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.authentication import authenticate
from panel import fastjson, logs, outage
from panel.errors import (
    ApiError,
    DependencyUnavailable,
    ErrorCode,
    FeatureDisabled,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    error_response,
)
from panel.localcache import DATABASE_ERRORS
from panel.parsers import JSONTooDeep, json_loads

from ..gateway import observability, tracing
from ..gateway.pipeline import Reply, Stream
from ..gateway.resolve import caller_get
from ..selectors import ModelInfo, ai_enabled_get, models_for_caller, registry_get

logger = logging.getLogger(__name__)


def openai_error(error: ApiError | FeatureDisabled, request_id: str) -> HttpResponse:
    """The OpenAI envelope (every AI route's, except the Anthropic routes')."""
    return error_response(error)


ErrorRenderer = Callable[[ApiError | FeatureDisabled, str], HttpResponse]


def ai_route(*, methods: dict[str, str], errors: ErrorRenderer = openai_error):
    """An async AI view: ``methods`` maps each allowed HTTP method to the key permission it needs.

    The view gets ``(request, identity, request_id, ...)``. Errors are rendered
    here rather than by middleware, so a refusal costs no thread hop; ``errors``
    renders them in the route's protocol.
    """

    def decorator(view):
        @csrf_exempt
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            request_id = logs.new_request_id()
            # Every log line of this request carries its id (the request's task has its
            # own context: nothing leaks to the next request).
            logs.request_id.set(request_id)
            span = tracing.request_started(request) if tracing.tracer is not None else None
            try:
                identity = await _caller(request, methods)
                response = await view(request, identity, request_id, *args, **kwargs)
            except Exception as exc:
                error = api_error(request, exc)
                response = errors(error, request_id)
                if 400 <= error.status_code < 500:
                    observability.request_refused(request, error)
            except BaseException:  # cancelled: the client left before an answer
                if span is not None:
                    span.end()
                raise
            set_headers(response, {"x-request-id": request_id})
            if span is not None:
                tracing.request_ended(span, response)
            return response

        wrapper.fast_path = True
        return wrapper

    return decorator


async def _caller(request, methods: dict[str, str]):
    """The authenticated caller, once the method, host and feature flag allow the request."""
    permission = methods.get(request.method)
    if permission is None:
        raise MethodNotAllowed(f"{request.method} is not allowed here.")
    _check_host(request)
    if not await ai_enabled_get():
        raise FeatureDisabled()
    return await authenticate(request, permission=permission)


# The Host headers already found allowed: Django's check reads five settings and matches
# every ALLOWED_HOSTS pattern on each request. Emptied when a setting changes, and when a
# client sends too many different hosts.
_allowed_hosts: set[tuple] = set()


def _check_host(request) -> None:
    """ALLOWED_HOSTS, as CommonMiddleware would check it (raises DisallowedHost).

    Django's host is the X-Forwarded-Host header (when trusted) or the Host header; only
    without a Host header may it be the server's name and port: then checked every time.
    Read from the headers, so that the fast path's request needs no ``META`` for it.
    """
    headers = request.headers
    seen = (headers.get("x-forwarded-host"), headers.get("host"))
    if seen in _allowed_hosts:
        return
    request.get_host()
    if seen[1] is None:  # no Host header: the server's name and port were checked
        return
    if len(_allowed_hosts) >= 256:
        _allowed_hosts.clear()
    _allowed_hosts.add(seen)


@receiver(setting_changed)
def _forget_hosts(**kwargs) -> None:
    _allowed_hosts.clear()


async def visible_models(identity) -> list[ModelInfo]:
    """The models the caller may use (the models lists of both protocols)."""
    user = await caller_get(identity)
    return models_for_caller(await registry_get(), user, identity.key)


def api_error(request, exc: Exception) -> ApiError | FeatureDisabled:
    """Any exception of an AI view as the API error to render (served without middleware)."""
    if isinstance(exc, ApiError | FeatureDisabled):
        return exc
    if isinstance(exc, DisallowedHost):
        return InvalidRequest("Invalid Host header.", code=ErrorCode.BAD_HOST)
    if isinstance(exc, DATABASE_ERRORS):
        # Past the cache (a session, a wallet, limits kept in the database): the
        # database is down, which is no bug; logged once per interval, not per request.
        outage.database.failed(exc)
        return DependencyUnavailable("Switchboard cannot reach its database; retry shortly.")
    logger.exception("Unhandled error in %s", request.path, exc_info=exc)
    return InternalError()


def json_body(request) -> dict:
    """The request's JSON object, or a 400 in the envelope."""
    try:
        body = json_loads(request.body or b"null")
    except RequestDataTooBig as exc:
        raise PayloadTooLarge("The request body is too large.") from exc
    except JSONTooDeep as exc:
        raise InvalidRequest(str(exc), code=ErrorCode.INVALID_JSON) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request.", code=ErrorCode.INVALID_JSON
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code=ErrorCode.INVALID_JSON)
    return body


def render(result: Reply | Stream) -> HttpResponse:
    """The gateway's answer on the wire: SSE for a stream, else its JSON (or the raw bytes)."""
    if isinstance(result, Stream):
        response = StreamingHttpResponse(result.wire(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        # The fast path (ai.api.fastpath) writes the batches itself, one write a batch;
        # Django's handlers (the test client's) read ``wire()``. Either reads them once.
        response.relay_batches = result.batches
    else:
        body = fastjson.dumps(result.payload) if result.payload is not None else result.raw
        response = HttpResponse(body, status=result.status, content_type="application/json")
    set_headers(response, result.headers)
    return response


def set_headers(response: HttpResponse, headers: dict[str, str]) -> None:
    """``response[name] = value`` for each header, cheaper for plain values (issue 20).

    Django checks and converts each name and value (~1 us a header here; a limited
    link's reply has eleven). A value of printable ASCII needs neither: it is stored as
    Django would store it. Anything else (a non-ASCII upstream name, a line break) goes
    through Django's own checks.
    """
    store = response.headers._store
    for name, value in headers.items():
        if value.isascii() and value.isprintable() and name.isascii() and name.isprintable():
            store[name.lower()] = (name, value)
        else:
            response[name] = value


def json_response(data, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, safe=False)
