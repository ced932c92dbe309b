"""Limits, their windows, and what one request reserves on them (step 3's data).

Each limit of a link or a key is a counter in a fixed UTC window (minute,
day, calendar month). A request is admitted by reserving, all or nothing, one
request and an upper bound of its tokens and cost on each counter, plus that
cost held on the wallet of a wallet-billed link (``Admission``). When it ends,
a ``Settlement`` turns the reservation into what was used. This module owns
those values and the refusals built from them (429 with x-ratelimit-* and
Retry-After, 402); where the counters live (Redis, the database) is
``admission``'s, ``leases``' and ``ledger``'s business. Amounts of money are
micro-credits.
"""

from __future__ import annotations

import logging
import time
from calendar import monthrange
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from orgs.services import to_micro
from panel.errors import ErrorCode, InsufficientQuota, InternalError, RateLimited

from ..models import UsageStatus
from .observability import REJECTIONS
from .pricing import Usage, reserved_amounts
from .resolve import Resolution

logger = logging.getLogger(__name__)
RATE, QUOTA = ErrorCode.RATE_LIMIT_EXCEEDED, ErrorCode.QUOTA_EXCEEDED
REQUESTS, TOKENS, COST = 0, 1, 2  # what a limit counts: an index into Admission.amounts
METRIC_NAMES = ("requests", "tokens", "cost")

# (limit field, metric, window, code) for links; keys use the first and the last.
LINK_LIMITS = (
    ("requests_per_minute", REQUESTS, "minute", RATE),
    ("requests_per_day", REQUESTS, "day", RATE),
    ("tokens_per_minute", TOKENS, "minute", RATE),
    ("tokens_per_day", TOKENS, "day", QUOTA),
    ("tokens_per_month", TOKENS, "month", QUOTA),
    ("cost_per_month", COST, "month", QUOTA),
)
KEY_LIMITS = (
    ("requests_per_minute", REQUESTS, "minute", RATE),
    ("cost_per_month", COST, "month", QUOTA),
)


def balance_key(wallet_id: int) -> str:
    """The Redis copy of a wallet's balance, in micro-credits (loaded on first use)."""
    return f"sb:wallet:{wallet_id}:balance"


def held_key(wallet_id: int) -> str:
    """What admitted, unsettled requests hold on a wallet in Redis."""
    return f"sb:wallet:{wallet_id}:held"


HEADER_NAMES = {
    metric: tuple(
        f"x-ratelimit-{part}-{METRIC_NAMES[metric]}" for part in ("limit", "remaining", "reset")
    )
    for metric in (REQUESTS, TOKENS)
}


@dataclass(frozen=True, slots=True)
class Limit:
    """One limited counter of a link or key, in the current window."""

    key: str  # the counter's key, window included
    limit: int
    reset_at: float  # epoch seconds at the end of the window
    ttl: int  # seconds the counter is kept from the start of this minute
    metric: int  # REQUESTS, TOKENS or COST
    code: str  # RATE or QUOTA
    label: str


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Plan:
    """A link and key's limits in one minute (compared by identity: one object a minute)."""

    link: object  # the LinkInfo and KeyInfo snapshots it was made for
    key: object
    minute: int
    limits: tuple[Limit, ...]
    wallet_keys: tuple[str, ...] = ()  # balance and held, for a wallet-billed link
    # For the x-ratelimit-* headers: per metric shown, its header names and its limits.
    header_groups: tuple[tuple[int, tuple[str, str, str], tuple[int, ...]], ...] = ()


EMPTY_PLAN = Plan(None, None, -1, ())


@dataclass(slots=True)
class Admission:
    """What one request reserved (or would), and the counters' values it saw."""

    plan: Plan = EMPTY_PLAN
    values: list[int] = field(default_factory=list)  # each counter before this request
    wallet_id: int | None = None
    tokens: int = 0
    cost: int = 0  # micro-credits, also what is held on the wallet
    headers: dict[str, str] = field(default_factory=dict)
    event: dict | None = None  # the UsageEvent's ids, journalled with the reservation
    is_journaled: bool = False  # an in-flight journal entry waits for its UsageEvent

    @property
    def limits(self) -> tuple[Limit, ...]:
        return self.plan.limits

    @property
    def is_empty(self) -> bool:
        return not self.plan.limits and self.wallet_id is None

    @property
    def hold(self) -> int:
        return self.cost if self.wallet_id is not None else 0

    @property
    def amounts(self) -> tuple[int, int, int]:
        return (1, self.tokens, self.cost)


@dataclass(slots=True)
class Settlement:
    """What a finished request changes: counter deltas, hold released, wallet charge."""

    admission: Admission
    deltas: tuple[int, int, int]  # per metric: what was used minus what was reserved
    charge: int  # micro-credits charged to the wallet


def reservation_for(resolution: Resolution, body: dict, route_name: str) -> Admission:
    """What this request would reserve (not reserved yet)."""
    tokens, cost = reserved_amounts(resolution.model, body, route_name)
    if tokens < 0 or cost < 0:
        raise negative(tokens, cost)
    link = resolution.link
    admission = Admission(
        plan=plans.get(link, resolution.key, time.time()), tokens=tokens, cost=cost
    )
    if link.is_wallet_billed:
        if link.wallet_id is None:
            REJECTIONS.labels(ErrorCode.INSUFFICIENT_QUOTA).inc()
            raise InsufficientQuota("This model is billed from a wallet that has no credits.")
        admission.wallet_id = link.wallet_id
    return admission


def settlement_for(admission: Admission, *, usage: Usage, cost: int, status: str) -> Settlement:
    """Deltas that turn the reservation into what was used, for a request that ended so.

    A request that delivered nothing (it failed, or its client left before any
    content) gives all of its reservation back and is charged nothing.
    """
    released = status != UsageStatus.OK and not (usage.completion_tokens or usage.images)
    if released:
        deltas = (-1, -admission.tokens, -admission.cost)
    else:
        # An upstream's usage block is not trusted to be positive: what a request
        # used is never less than nothing, and never credits a wallet.
        used = max(usage.prompt_tokens, 0) + max(usage.completion_tokens, 0)
        cost = max(cost, 0)
        deltas = (0, used - admission.tokens, cost - admission.cost)
    charge = 0 if released or admission.wallet_id is None else cost
    return Settlement(admission=admission, deltas=deltas, charge=charge)


def counter_deltas(settlements: list[Settlement]) -> dict[str, int]:
    """Every settlement's counter changes, summed per counter key."""
    deltas: dict[str, int] = defaultdict(int)
    for settlement in settlements:
        for limit in settlement.admission.limits:
            deltas[limit.key] += settlement.deltas[limit.metric]
    return deltas


# --- Windows and plans -----------------------------------------------------------------


def _windows(now: float) -> dict[str, tuple[str, float]]:
    moment = datetime.fromtimestamp(now, UTC)
    minute = moment.replace(second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    days_in_month = monthrange(moment.year, moment.month)[1]
    month = day.replace(day=1)
    return {
        "minute": (minute.strftime("%Y%m%d%H%M"), (minute + timedelta(minutes=1)).timestamp()),
        "day": (day.strftime("%Y%m%d"), (day + timedelta(days=1)).timestamp()),
        "month": (month.strftime("%Y%m"), (month + timedelta(days=days_in_month)).timestamp()),
    }


class Plans:
    """Each (link, key) pair's plan in the current minute, made once a minute.

    Day and month windows turn over on minute boundaries too, so one minute's
    plan holds for all of them. A changed link or key is a new snapshot object,
    which misses the cache.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every plan (a new minute; tests start afresh)."""
        self.minute = -1
        self.windows: dict[str, tuple[str, float]] = {}
        self.plans: dict[tuple[int, int | None], Plan] = {}

    def get(self, link, key, now: float) -> Plan:
        minute = int(now // 60)
        if minute != self.minute:
            self.reset()
            self.minute, self.windows = minute, _windows(now)
        cache_key = (link.id, key.id if key is not None else None)
        plan = self.plans.get(cache_key)
        if plan is None or plan.link is not link or plan.key is not key:
            plan = self.plans[cache_key] = self._make(link, key, minute)
        return plan

    def _make(self, link, key, minute: int) -> Plan:
        scopes = [(f"link:{link.id}", link.limits, LINK_LIMITS)]
        if key is not None:
            scopes.append((f"key:{key.id}", key.limits, KEY_LIMITS))
        limits = [
            self._limit(scope, name, limit, metric, window, code, minute * 60)
            for scope, values, table in scopes
            for name, metric, window, code in table
            if (limit := values.get(name)) is not None
        ]
        wallet_keys = ()
        if link.is_wallet_billed and link.wallet_id is not None:
            wallet_keys = (balance_key(link.wallet_id), held_key(link.wallet_id))
        header_groups = tuple(
            (metric, HEADER_NAMES[metric], indexes)
            for metric in (REQUESTS, TOKENS)
            if (indexes := tuple(i for i, lim in enumerate(limits) if lim.metric == metric))
        )
        return Plan(link, key, minute, tuple(limits), wallet_keys, header_groups)

    def _limit(self, scope, name, limit, metric, window, code, minute_start: float) -> Limit:
        window_id, reset_at = self.windows[window]
        return Limit(
            key=f"sb:lim:{scope}:{name}:{window_id}",
            limit=to_micro(limit) if metric == COST else int(limit),
            reset_at=reset_at,
            ttl=int(reset_at - minute_start) + 60,  # kept a minute past the window's end
            metric=metric,
            code=code,
            label=name.replace("_", " "),
        )


plans = Plans()


# --- Headers and refusals ------------------------------------------------------------


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 2h3m4s."""
    seconds = max(0, int(seconds + 0.999))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_headers(admission: Admission, *, admitted: bool = True) -> dict[str, str]:
    """x-ratelimit-* for requests and tokens: the tightest limit of each."""
    headers = {}
    now = time.time()
    limits, values, amounts = admission.limits, admission.values, admission.amounts
    for metric, (limit_name, remaining_name, reset_name), indexes in admission.plan.header_groups:
        tightest, left = -1, 0
        for i in indexes:
            room = limits[i].limit - values[i]
            if tightest < 0 or room < left:
                tightest, left = i, room
        limit = limits[tightest]
        headers[limit_name] = str(limit.limit)
        headers[remaining_name] = str(max(0, left - (amounts[metric] if admitted else 0)))
        headers[reset_name] = _duration(limit.reset_at - now)
    return headers


def refusal(admission: Admission, failed: Limit) -> RateLimited:
    """The 429 for a request that ``failed`` has no room for."""
    retry_after = max(1, int(failed.reset_at - time.time() + 0.999))
    headers = rate_headers(admission, admitted=False)
    headers["Retry-After"] = str(retry_after)
    REJECTIONS.labels(failed.code).inc()
    what = "rate limit" if failed.code == RATE else "quota"
    return RateLimited(
        f"You exceeded your {what} of {failed.label} for this model; retry in {retry_after}s.",
        code=failed.code,
        headers=headers,
    )


def negative(tokens: int, cost: int) -> InternalError:
    """A reservation below zero would give room instead of taking it.

    Requests are checked before their estimate, so only a price below zero (or
    a bug) gets here.
    """
    logger.error("Refused a negative reservation: %d tokens, %d micro-credits", tokens, cost)
    return InternalError("This request's reservation came out negative; it was refused.")


def short_of_credits() -> InsufficientQuota:
    REJECTIONS.labels(ErrorCode.INSUFFICIENT_QUOTA).inc()
    return InsufficientQuota("Your balance cannot cover this request; top up your wallet.")
