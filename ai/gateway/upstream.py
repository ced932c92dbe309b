"""Step 5: the pooled upstream client of each event loop, and a single attempt.

Measured (issue 3): httpx's own pool collapses near 64 concurrent requests,
aiohttp's holds 2.5-3x more; measured again (issue 20), aiohttp's client costs about
90 us of CPU a call more than a protocol on httptools' parser. So the request path's
POSTs go through ``http1``; aiohttp's session stays for the instance proxy (any
method, any body), and httpx for off-path calls such as health probes.
"""

from __future__ import annotations

import asyncio
import weakref

import aiohttp

from ..models import ApiStyle
from ..selectors import UpstreamInfo
from . import http1, tracing

_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Failures after which the next upstream is tried (if no byte reached the client).
RETRYABLE_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


# An upstream that refuses our credentials (401, 403) has failed, whatever the
# client sent: passed through, it would read as the client's key being invalid.
UPSTREAM_AUTH_FAILURES = (401, 403)


# Sent to an Anthropic-style upstream (its Messages API version).
ANTHROPIC_VERSION = "2023-06-01"


def auth_headers(api_style: str, api_key: str) -> dict[str, str]:
    """How an upstream of this style takes its key (requests and health probes)."""
    if api_style == ApiStyle.ANTHROPIC:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        return {**headers, "x-api-key": api_key} if api_key else headers
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def is_retryable_status(status: int) -> bool:
    """A status after which the next upstream is tried, counted by the circuit breaker.

    A redirect is one: redirects are not followed (``http1``), so a 3xx means the
    upstream's base URL is not where it serves (http:// for https://, say).
    """
    return status >= 500 or status == 429 or status in UPSTREAM_AUTH_FAILURES or 300 <= status < 400


def session() -> aiohttp.ClientSession:
    """The shared client session of the running event loop."""
    loop = asyncio.get_running_loop()
    client = _sessions.get(loop)
    if client is None or client.closed:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        # No cookie jar: the session is shared by every tenant's requests, so a cookie an
        # upstream set must not ride along on the next caller's request (and filtering
        # the jar cost every request a few microseconds, issue 20).
        client = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        _sessions[loop] = client
    return client


def upstream_request_id(request_id: str) -> str:
    """The request id as sent upstream: the UUID without our ``req_`` prefix.

    llama-cpp-python's server (starlette-context) answers 400 with no body to an
    X-Request-Id that is not a UUID; the hex digits still match our logs.
    """
    return request_id.removeprefix("req_")


async def send(
    upstream: UpstreamInfo,
    path: str,
    body: bytes,
    *,
    request_id: str,
    stream: bool = False,
    more: dict[str, str] | None = None,
    head_by: float | None = None,
) -> http1.Response:
    """POST ``body`` to the upstream (with ``more`` headers); returns the response with its
    body still unread.

    A JSON answer's reads are each bounded by ``first_byte_timeout``; a stream's are
    not: the pipeline bounds its first event (``first_byte_timeout``: the connection and
    head by ``head_by``, then the first read) and the wait for each later one
    (``idle_timeout``) itself.
    """
    headers = {
        **(more or {}),
        "Content-Type": "application/json",
        "X-Request-Id": upstream_request_id(request_id),
        **auth_headers(upstream.api_style, upstream.api_key),
    }
    timeouts = {
        "total": upstream.total_timeout,
        "connect": upstream.connect_timeout,
        "read": None if stream else upstream.first_byte_timeout,
        "head_by": head_by,
    }
    url = f"{upstream.base_url}/{path}"
    if tracing.tracer is None:
        return await http1.post(pool(), url, body, headers, **timeouts)
    span = tracing.upstream_started(upstream, url, headers)
    try:
        response = await http1.post(pool(), url, body, headers, **timeouts)
    except BaseException as exc:
        tracing.upstream_ended(span, status=None, error=exc)
        raise
    tracing.upstream_ended(span, status=response.status)
    return response


def pool() -> http1.Pool:
    """The running event loop's pool of upstream connections (the request path's client)."""
    loop = asyncio.get_running_loop()
    found = _pools.get(loop)
    if found is None or found.closed:
        found = _pools[loop] = http1.Pool()
    return found


async def close_session() -> None:
    """Close the running loop's client session and pool (at server shutdown)."""
    loop = asyncio.get_running_loop()
    found = _pools.pop(loop, None)
    if found is not None:
        found.close()
    client = _sessions.pop(loop, None)
    if client is not None:
        await client.close()
