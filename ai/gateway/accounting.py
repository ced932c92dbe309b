"""Step 7: the one UsageEvent each admitted request leaves, and its settlement.

Owns the ``Record`` of a request, filled in along the request path (who, which
model and upstream, status, usage, timings), and ``usage_record``, which turns
it into an event row, settles its reservation and charges its wallet, all
queued in the ``ledger``'s buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orgs.services import credits
from panel import conf

from ..models import UsageStatus
from ..selectors import ModelInfo
from . import ledger, observability
from .ledger import UsageRow
from .pricing import Usage, cost_micro
from .reservations import Admission, settlement_for


@dataclass(slots=True)
class Record:
    """Everything known about one admitted request, filled in along the way."""

    request_id: str
    route: str
    user_id: int
    organisation_id: int | None
    api_key_id: int | None
    link_id: int
    model: ModelInfo
    is_stream: bool
    started_at: float
    upstream_id: int | None = None
    attempts: int = 0
    status: str = UsageStatus.OK
    http_status: int | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: int = 0
    ttft_ms: int | None = None
    error: str = ""
    is_cache_hit: bool = False  # answered from the response cache: no upstream, no cost
    admission: Admission | None = None  # settled when the event is queued
    # The instance this request keeps busy (``ai.instances.activity``) and its priority.
    in_use: tuple[int, int] | None = None

    def event_ids(self) -> dict:
        """The UsageEvent's ids, as the in-flight journal keeps them."""
        ids = {name: getattr(self, name) for name in EVENT_ID_FIELDS}
        ids.update(model_id=self.model.id, model_name=self.model.name)
        return ids


# What a reconciler needs to write a request's event if this process dies first.
EVENT_ID_FIELDS = (
    "request_id",
    "route",
    "is_stream",
    "user_id",
    "organisation_id",
    "api_key_id",
    "link_id",
)


def usage_record(record: Record) -> None:
    """Queue the UsageEvent of a finished request and settle its reservation."""
    cost = 0 if record.is_cache_hit else cost_micro(record.model, record.usage)
    admission = record.admission
    settlement = None
    if admission is not None and not admission.is_empty:
        settlement = settlement_for(admission, usage=record.usage, cost=cost, status=record.status)
    is_journaled = admission is not None and admission.is_journaled
    ledger.usage_queue(_row(record, cost), settlement, is_journaled=is_journaled)
    observability.request_finished(record)


def _row(record: Record, cost: int) -> UsageRow:
    usage = record.usage
    return UsageRow(
        conf.now(),
        record.request_id,
        record.user_id,
        record.organisation_id,
        record.api_key_id,
        record.link_id,
        record.model.id,
        record.model.name,
        record.upstream_id,
        record.route,
        record.is_stream,
        record.status,
        record.http_status,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.images,
        usage.is_estimated,
        credits(cost),
        record.latency_ms,
        record.ttft_ms,
        max(record.attempts, 1),
        record.error[:300],
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        record.is_cache_hit,
    )
