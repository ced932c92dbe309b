"""Metrics (Prometheus), the one log line per gateway request and one per refused request.

With PROMETHEUS_MULTIPROC_DIR set, prometheus-client's multiprocess mode
aggregates every worker process of a host into one /metrics answer;
without it, /metrics shows the answering process only (fine for one
process, such as `make run`).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

from accounts.models import APIKey
from accounts.services import PREFIX_LENGTH

from ..models import UsageStatus
from . import tracing

logger = logging.getLogger("switchboard.gateway")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "switchboard_gateway_requests_total",
    "Admitted gateway requests by route, model and outcome.",
    ["route", "model", "status"],
)
LATENCY = Histogram(
    "switchboard_gateway_request_seconds",
    "Time from admission to the last byte.",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "switchboard_gateway_time_to_first_token_seconds",
    "Time to the first content chunk of a stream.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("switchboard_gateway_tokens_total", "Tokens in and out.", ["model", "direction"])
# Parts of the tokens above (never added to them): a sum over TOKENS stays every token once.
TOKEN_PARTS = Counter(
    "switchboard_gateway_token_parts_total",
    "Prompt tokens read from or written to a prompt cache, and the completion's reasoning tokens.",
    ["model", "kind"],
)
RESPONSE_CACHE = Counter(
    "switchboard_response_cache_requests_total",
    "Requests to a model with a response cache, by what the cache did (x-switchboard-cache).",
    ["model", "result"],
)
UPSTREAM_ERRORS = Counter(
    "switchboard_upstream_errors_total", "Failed upstream attempts.", ["model", "upstream"]
)
FAILOVERS = Counter(
    "switchboard_gateway_failovers_total", "Requests served after failing over.", ["model"]
)
REJECTIONS = Counter(
    "switchboard_limit_rejections_total", "Requests refused by a limit or a wallet.", ["code"]
)
ADMISSION_CALLS = Counter(
    "switchboard_limit_admission_calls_total",
    "Admission script calls to Redis (fewer than admitted requests while leases serve them).",
)
# Every refused request of an AI route (4xx: no key, no balance, unknown model, a limit,
# too large, invalid), by status and the error envelope's code.
REFUSED = Counter(
    "switchboard_gateway_refused_total",
    "Requests refused with a 4xx by an AI route, by status and reason (the error's code).",
    ["status", "reason"],
)
BREAKER_OPEN = Gauge(
    "switchboard_upstream_breaker_open",
    "1 while an upstream's circuit breaker is open in this process.",
    ["upstream"],
    multiprocess_mode="max",
)


def response_cache_used(model: str, result: str) -> None:
    """Count what the response cache did for a request: hit, miss, bypass or refresh."""
    RESPONSE_CACHE.labels(model, result).inc()


def _child(metric, *values: str):
    """``metric.labels(*values)``, without its validation and lock once the series exists.

    prometheus-client's ``labels()`` checks and converts every value and takes the
    metric's lock on each call: ~3 us, five times a request (issue 20). An existing
    series is read from the metric's own dict (a plain lookup; after ``clear()`` the
    series is gone from it and ``labels()`` makes it again).
    """
    child = metric._metrics.get(values)
    return child if child is not None else metric.labels(*values)


def request_finished(record) -> None:
    """Count a finished request and write its log line (never keys, secrets or content)."""
    model, route, usage = record.model.name, record.route, record.usage
    _child(REQUESTS, route, model, str(record.status)).inc()
    _child(LATENCY, route, model).observe(record.latency_ms / 1000)
    if record.ttft_ms is not None:
        _child(TTFT, model).observe(record.ttft_ms / 1000)
    _child(TOKENS, model, "prompt").inc(usage.prompt_tokens)
    _child(TOKENS, model, "completion").inc(usage.completion_tokens)
    for kind, count in (
        ("cache_read", record.usage.cache_read_tokens),
        ("cache_write", record.usage.cache_write_tokens),
        ("reasoning", record.usage.reasoning_tokens),
    ):
        # Most replies have none of these parts: adding 0 cost a label lookup and two
        # locks each (~4 us a request for the three), and a series that stays absent
        # reads as 0 in any rate() or increase().
        if count:
            TOKEN_PARTS.labels(model, kind).inc(count)
    if record.attempts > 1 and record.status == UsageStatus.OK:
        FAILOVERS.labels(model).inc()
    if tracing.tracer is not None:
        tracing.request_finished(record)
    if logger.isEnabledFor(logging.INFO):
        # The line's fields beside timestamp, level, logger and message (panel.logs).
        logger.info(
            "gateway request",
            extra={
                "event": "gateway_request",
                "request_id": record.request_id,
                "user_id": record.user_id,
                "organisation_id": record.organisation_id,
                "api_key_id": record.api_key_id,
                "model": model,
                "route": record.route,
                "upstream_id": record.upstream_id,
                "attempts": record.attempts,
                "status": record.status,
                "http_status": record.http_status,
                "latency_ms": record.latency_ms,
                "ttft_ms": record.ttft_ms,
                "prompt_tokens": record.usage.prompt_tokens,
                "completion_tokens": record.usage.completion_tokens,
                "cache_read_tokens": record.usage.cache_read_tokens,
                "cache_write_tokens": record.usage.cache_write_tokens,
                "reasoning_tokens": record.usage.reasoning_tokens,
                "estimated": record.usage.is_estimated,
            },
        )


def request_refused(request, error) -> None:
    """Count a request refused before (or instead of) an answer, and log it.

    The line names the key by its visible prefix only (``key_prefix``), never the
    key, and not the error's message (it may repeat what the client sent).
    """
    reason = str(error.code or "unknown")
    REFUSED.labels(str(error.status_code), reason).inc()
    if logger.isEnabledFor(logging.INFO):
        match = request.resolver_match
        logger.info(
            "gateway request refused",
            extra={
                "event": "gateway_refused",
                "http_status": error.status_code,
                "reason": reason,
                "method": request.method,
                "route": f"/{match.route}" if match is not None else None,
                "key_prefix": key_prefix(request.headers),
            },
        )


def key_prefix(headers) -> str | None:
    """The visible prefix of the request's API key (as the admin shows it), or None.

    Only a token shaped like one of our keys, long enough that the prefix is a part of
    it, gives one: anything else (another service's secret, a typo) is not logged at all.
    """
    header = headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    token = token or (headers.get("X-API-Key") or "").strip()
    if not token.startswith(APIKey.PREFIX) or len(token) < 2 * PREFIX_LENGTH:
        return None
    return token[:PREFIX_LENGTH]
