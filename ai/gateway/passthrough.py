"""llama.cpp's own routes of an instance (``/llama-cpp/{name}/...``): who, start, account.

``prepare`` finds the instance for the caller (404, as for no such name, when they
may not use it), admits a call of a route that produces tokens through the
caller's link to a model the instance serves (its limits and wallet apply as on
/v1), starts the instance on demand and marks it in use; the route relays the
answer, feeding it to ``Passthrough.feed``, and ``Passthrough.end`` ends the call:
the instance is free again, and a token route leaves one UsageEvent with the
counts llama.cpp reports (``tokens_evaluated``/``tokens_predicted`` or ``timings``),
else an estimate.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from decimal import Decimal

from accounts.authentication import Identity
from panel.errors import (
    ErrorCode,
    InstanceNotRunning,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)

from ..instances import activity
from ..instances.selectors import name_check
from ..models import Backend, UsageStatus
from ..selectors import InstanceAccess, InstanceInfo, ModelInfo, instance_for_caller
from ..selectors.snapshots import instance_info_get
from . import starts
from .accounting import Record, usage_record
from .admission import admit
from .pricing import Usage, estimate_prompt, estimate_tokens, usage_from_block
from .resolve import Resolution, caller_get, key_may_use_instance

# The routes whose answers are generated tokens, each recorded as a UsageEvent.
TOKEN_ROUTES = frozenset({"completion", "infill", "embeddings"})
# What the instances API asks of an instance manager for a read and for the rest.
ROLE_ACTIONS = {"GET": "view", "POST": "change"}
# Kept of an answer to read its counts: a JSON body, or a stream's last event.
READ_LIMIT = 1 << 20


@dataclass(slots=True)
class Passthrough:
    """One call of a llama.cpp route, from its admission to its end."""

    instance: InstanceInfo
    priority: int
    record: Record | None = None  # a token route's, until it is recorded
    body: dict = field(default_factory=dict)
    answer: bytearray = field(default_factory=bytearray)
    last_event: bytes = b""
    events: int = 0
    is_too_long: bool = False  # more than READ_LIMIT to keep: its usage is estimated
    is_open: bool = True

    def feed(self, chunk: bytes) -> None:
        """Read a piece of the answer on its way to the client (token routes only)."""
        if self.record is None or self.is_too_long:
            return
        self.answer += chunk
        if self.record.is_stream:
            *lines, rest = bytes(self.answer).split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    self.events += 1
                    self.last_event = line[5:]
            self.answer = bytearray(rest)
        if len(self.answer) > READ_LIMIT:
            self.answer.clear()
            self.is_too_long = True

    def replied(self, status: int) -> None:
        if self.record is not None:
            self.record.http_status = status
            if status >= 400:
                self.record.status, self.record.error = UsageStatus.UPSTREAM_ERROR, f"HTTP {status}"

    def end(self, error: BaseException | None = None) -> None:
        """The call is over (``error``: how it broke off); its event is queued."""
        if not self.is_open:
            return
        self.is_open = False
        activity.end(self.instance.id, self.priority)
        record = self.record
        if record is None:
            return
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            record.status = UsageStatus.CLIENT_CANCELLED
        elif error is not None:
            record.status = UsageStatus.UPSTREAM_ERROR
            record.http_status = getattr(error, "status_code", None) or record.http_status or 502
            record.error = str(error) or type(error).__name__
        record.usage = llama_usage(self._payload(), self.body, self.events)
        _finish(record)

    def _payload(self):
        raw = self.last_event if self.record.is_stream else bytes(self.answer)
        try:
            return json.loads(raw)
        except ValueError:
            return None


async def prepare(
    *, identity: Identity, name: str, route: str, method: str, body: bytes | None, request_id: str
) -> Passthrough:
    """The instance's call, admitted, with the instance running; raises what refuses it."""
    name_check(name)
    user = await caller_get(identity)
    access = await instance_for_caller(
        user=user, key=identity.key, name=name, action=ROLE_ACTIONS[method]
    )
    if access is None:
        raise NotFound(f"No instance is named '{name}'.", code=ErrorCode.INSTANCE_NOT_FOUND)
    if not key_may_use_instance(identity.key, access.instance.id):
        raise PermissionDenied(
            f"This API key may not use the instance '{name}'.", code=ErrorCode.PERMISSION_DENIED
        )
    if access.instance.backend != Backend.LLAMA_CPP:
        raise InvalidRequest(f"Instance '{name}' is not a llama.cpp server.", param="name")
    call = Passthrough(
        instance=access.instance, priority=access.link.priority if access.link else 0
    )
    if route in TOKEN_ROUTES:
        call.body = _json_object(body)
        await _admit(call, access, identity, route, request_id, user)
    activity.begin(call.instance.id, call.priority)
    try:
        call.instance = await _running(call.instance)
    except BaseException as exc:
        call.end(exc)
        raise
    return call


async def _admit(call, access: InstanceAccess, identity, route, request_id, user) -> None:
    link, key = access.link, identity.key
    model = access.model or _unpriced(access.instance)
    record = call.record = Record(
        request_id=request_id,
        route=f"llama-cpp.{route}",
        user_id=user.id,
        organisation_id=(link.organisation_id if link else access.instance.organisation_id)
        or (key.organisation_id if key else None),
        api_key_id=key.id if key else None,
        link_id=link.id if link else None,
        model=model,
        is_stream=call.body.get("stream") is True and route != "embeddings",
        started_at=time.monotonic(),
    )
    if link is None:
        return  # its owner's or an operator's own use: no link, no limits
    record.admission = await admit(
        resolution=Resolution(user=user, key=key, model=model, link=link),
        body=_bounds_body(call.body),
        route_name="embeddings" if route == "embeddings" else "completions",
        event=record.event_ids(),
        on_cancelled=lambda admission: _cancelled(record, admission),
    )


async def _running(instance: InstanceInfo) -> InstanceInfo:
    """The instance, started first when it does not run and may be started on demand."""
    if instance.is_routable:
        return instance
    name = instance.name
    if not instance.on_demand_start:
        raise InstanceNotRunning(
            f"The instance '{name}' is {instance.status}; start it first "
            f"(POST /api/v1/instances/{name}/start)."
        )
    await starts.instance_start(instance_id=instance.id, name=name, node=instance.node)
    fresh = await instance_info_get(name)
    if fresh is None or not fresh.is_routable:
        status = fresh.status if fresh else "deleted"
        raise InstanceNotRunning(f"The instance '{name}' was started but is {status} now.")
    return fresh


def llama_usage(payload, body: dict, events: int = 0) -> Usage:
    """The counts of a llama.cpp answer (or an OpenAI usage block), else an estimate."""
    if isinstance(payload, dict):
        counted = usage_from_block(payload.get("usage"))
        if counted is not None:
            return counted
        timings = payload.get("timings") if isinstance(payload.get("timings"), dict) else {}
        prompt = _count(payload.get("tokens_evaluated"), timings.get("prompt_n"))
        completion = _count(payload.get("tokens_predicted"), timings.get("predicted_n"))
        if prompt is not None and completion is not None:
            return Usage(prompt_tokens=prompt, completion_tokens=completion)
    content = payload.get("content") if isinstance(payload, dict) else None
    text = estimate_tokens(content) if isinstance(content, str) else 0
    return Usage(
        prompt_tokens=estimate_prompt(_bounds_body(body)),
        completion_tokens=max(text, events - 1 if events else 0),
        is_estimated=True,
    )


def _count(*values) -> int | None:
    """The first value that is a count (an int, not a bool, not negative)."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _json_object(body: bytes | None) -> dict:
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request.", code=ErrorCode.INVALID_JSON
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code=ErrorCode.INVALID_JSON)
    n_predict = data.get("n_predict")
    if n_predict is not None and (
        isinstance(n_predict, bool) or not isinstance(n_predict, int) or n_predict < -1
    ):
        raise InvalidRequest(
            "n_predict must be an integer of at least -1 (-1: until the end).", param="n_predict"
        )
    return data


def _bounds_body(body: dict) -> dict:
    """The fields the gateway's reservation and estimates read, from llama.cpp's names."""
    texts = [body.get(name) for name in ("input_prefix", "input_suffix")]
    extra = [json.dumps(body["input_extra"])] if "input_extra" in body else []
    bounds = {
        "prompt": body.get("prompt"),
        "input": body.get("content", body.get("input")),
        "suffix": [t for t in texts if isinstance(t, str)] + extra,
    }
    n_predict = body.get("n_predict")
    if isinstance(n_predict, int) and n_predict > 0:
        bounds["max_tokens"] = n_predict
    return bounds


def _unpriced(instance: InstanceInfo) -> ModelInfo:
    """What an instance that serves no model is recorded as: its name, at no price."""
    zero = Decimal("0")
    return ModelInfo(
        id=None,
        name=instance.name,
        display_name=instance.name,
        kind="",
        is_active=True,
        tags=(),
        config={},
        input_price_per_million=zero,
        output_price_per_million=zero,
        price_per_image=zero,
        response_cache_ttl=None,
        created=0,
        upstreams=(),
        routable=(),
    )


def _cancelled(record: Record, admission) -> None:
    record.admission = admission
    record.status = UsageStatus.CLIENT_CANCELLED
    _finish(record)


def _finish(record: Record) -> None:
    record.latency_ms = int((time.monotonic() - record.started_at) * 1000)
    usage_record(record)
