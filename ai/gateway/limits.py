"""Step 3: admission. Limits and wallets are reserved before any upstream call.

Each limit is a counter in a fixed UTC window (minute, day, calendar month).
Admission reserves, all or nothing, one request and an estimate of tokens
(prompt estimate + max_tokens, or the model's output limit) and cost, on
every limited counter of the link and the key, plus the estimated cost on
the wallet of a wallet-billed link. After the request the reservation is
settled to what was used (see ``settle``). With Redis one Lua script does the
whole admission atomically for every process; without Redis a database
transaction does it under row locks (SQLite: the database write lock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings

from orgs.services import redis_balance_key, redis_held_key, to_micro
from panel import redis as sb_redis
from panel.db import run_sync
from panel.errors import (
    DependencyUnavailable,
    InsufficientQuota,
    InternalError,
    InvalidRequest,
    RateLimited,
)
from panel.redis_pipe import Script, pack_items

from . import journal
from .accounting import Usage, cost_of, prompt_bound
from .observability import REJECTIONS
from .resolve import Resolution

logger = logging.getLogger(__name__)
RATE, QUOTA = "rate_limit_exceeded", "quota_exceeded"


REQUESTS, TOKENS, COST = 0, 1, 2  # what a limit counts: an index into Admission.amounts
METRIC_NAMES = ("requests", "tokens", "cost")


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


@dataclass(frozen=True, slots=True)
class Plan:
    """A link and key's limits in the current minute, and their part of the Redis call."""

    link: object  # the LinkInfo and KeyInfo snapshots it was made for
    key: object
    limits: tuple[Limit, ...]
    wallet_keys: tuple[str, ...]  # balance and held, for a wallet-billed link
    # The admission script's arguments around the two per-request ones (tokens, cost).
    redis_head: bytes
    redis_tail: bytes
    redis_items: int
    lease: Lease | None = None
    # For the x-ratelimit-* headers: per metric shown, its header names and its limits.
    header_groups: tuple[tuple[int, tuple[str, str, str], tuple[int, ...]], ...] = ()


EMPTY_PLAN = Plan(None, None, (), (), b"", b"", 0)


@dataclass(slots=True)
class Admission:
    plan: Plan = EMPTY_PLAN
    values: list[int] = field(default_factory=list)  # each counter before this request
    wallet_id: int | None = None
    tokens: int = 0
    cost: int = 0  # micro-credits, also what is held on the wallet
    headers: dict[str, str] = field(default_factory=dict)
    event: dict | None = None  # journalled with the reservation on the database path

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


def _estimate(resolution: Resolution, body: dict, route_name: str) -> tuple[int, int, int]:
    """Reserved tokens, reserved micro-credits and images, before the call.

    At least what the request can use, as far as the gateway can know it: a
    prompt bound and every output the request asks for (see ``prompt_bound``).
    Reads only fields ``_check_request_bounds`` has checked.
    """
    model = resolution.model
    prompt = prompt_bound(body)
    if route_name == "images.generations":
        # An image request records its prompt's tokens too (an estimate, without a usage block).
        images = body.get("n") or 1
        usage = Usage(prompt_tokens=prompt, images=images)
        return prompt, to_micro(cost_of(model, usage)), images
    output = 0
    if route_name != "embeddings":
        output = _output_reserved(model, body)
    usage = Usage(prompt_tokens=prompt, completion_tokens=output)
    return prompt + output, to_micro(cost_of(model, usage)), 0


def _output_reserved(model, body: dict) -> int:
    """Each of the n (or best_of) outputs: the larger max field, else the model's limit."""
    asked = [body[name] for name in ("max_tokens", "max_completion_tokens") if body.get(name)]
    each = max(asked) if asked else model.max_output_tokens
    each = each or settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS
    return each * max(body.get("n") or 1, body.get("best_of") or 1)


# --- Leases -----------------------------------------------------------------------
#
# A process that admits many requests on the same link and key reserves them
# from Redis several at a time (a lease) and spends the reservation locally,
# so most admissions need no round trip. Redis grants a lease only out of
# plenty: at most 1/LEASE_GUARD of what is left on every counter and the
# wallet, otherwise exactly one request, so near a limit every admission is
# exact and shared by all processes. What a lease holds unspent is given back
# after LEASE_SECONDS, when the minute turns, and at exit; a process that dies
# leaves it counted (the safe side) until its window ends. Each request still
# settles its own usage, so counters and charges are exact either way.

LEASE_GUARD = 10
LEASE_MAX = 512  # requests in one lease
LEASE_SECONDS = 1.0  # unspent reservations are given back after this
LEASE_PACE = 0.25  # a lease spent faster than this doubles the next one


@dataclass(slots=True, eq=False)
class Lease:
    """Reservations this process holds for one plan: requests, tokens, micro-credits."""

    size: int = 1  # how many requests the next refill asks for
    requests: int = 0
    tokens: int = 0
    cost: int = 0
    wallet_id: int | None = None
    base: list[int] = field(default_factory=list)  # counter values after the last refill
    taken: list[int] = field(default_factory=lambda: [0, 0, 0])  # spent since, per metric
    refilled_at: float = 0.0
    refilling: asyncio.Task | None = None  # a refill of more than one request in flight
    expiry: asyncio.TimerHandle | None = None
    plan: Plan | None = None  # the plan whose counters it reserved on
    journal_id: str | None = None  # its entry in the in-flight journal while it holds any

    def take(self, admission: Admission) -> bool:
        """Spend one request of the lease on ``admission``, if it covers it."""
        if self.requests < 1 or self.tokens < admission.tokens or self.cost < admission.cost:
            return False
        self.requests -= 1
        self.tokens -= admission.tokens
        self.cost -= admission.cost
        taken = self.taken
        admission.values = [
            value + taken[limit.metric]
            for value, limit in zip(self.base, admission.limits, strict=True)
        ]
        taken[0] += 1
        taken[1] += admission.tokens
        taken[2] += admission.cost
        journal.redis_lease_take(self.journal_id, admission)
        return True

    def add(self, admission: Admission, asked: int, grant: int) -> None:
        """A refill for ``admission`` asked ``asked`` requests and got ``grant``; it keeps one."""
        now = time.monotonic()
        if asked == self.size:  # a refill of the current size tells how to size the next
            if grant < asked:  # Redis cut it short: a limit or the balance is near
                self.size = max(1, grant)
            elif now - self.refilled_at < LEASE_PACE:
                self.size = min(self.size * 2, LEASE_MAX)
            elif now - self.refilled_at > 4 * LEASE_PACE:
                self.size = max(1, self.size // 2)
            self.refilled_at = now
        if grant <= 1:
            return
        spare = grant - 1
        self.requests += spare
        self.tokens += spare * admission.tokens
        self.cost += spare * admission.cost
        self.wallet_id = admission.wallet_id
        if self.journal_id is None:
            self.journal_id = journal.lease_id()
        journal.redis_lease_grant(self.journal_id, admission, spare)
        amounts = admission.amounts
        self.base = [
            value + amounts[limit.metric]
            for value, limit in zip(admission.values, admission.limits, strict=True)
        ]
        self.taken = [0, 0, 0]
        if self.expiry is None:
            self.expiry = asyncio.get_running_loop().call_later(LEASE_SECONDS, self.release)

    def release(self) -> None:
        """Give back whatever is unspent (settled with the next usage flush)."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.requests or self.tokens or self.cost or self.journal_id:
            from .accounting import settlement_queue

            settlement_queue(self.settlement(), done=journal.lease_fields(self.journal_id))
        self.requests = self.tokens = self.cost = 0
        self.journal_id = None

    def settlement(self) -> Settlement:
        unspent = Admission(
            plan=self.plan, wallet_id=self.wallet_id, tokens=self.tokens, cost=self.cost
        )
        return Settlement(
            admission=unspent, deltas=(-self.requests, -self.tokens, -self.cost), charge=0
        )


class _Plans:
    """Each (link, key) pair's limits in the current minute, made once a minute.

    Day and month windows turn over on minute boundaries too, so one minute's
    plan holds for all of them. A changed link or key is a new snapshot object,
    which misses the cache.
    """

    def __init__(self) -> None:
        self.minute = -1
        self.windows: dict[str, tuple[str, float]] = {}
        self.plans: dict[tuple[int, int | None], Plan] = {}

    def get(self, link, key, now: float) -> Plan:
        minute = int(now // 60)
        if minute != self.minute:
            self.release_leases()
            self.minute, self.windows, self.plans = minute, _windows(now), {}
        cache_key = (link.id, key.id if key is not None else None)
        plan = self.plans.get(cache_key)
        if plan is None or plan.link is not link or plan.key is not key:
            if plan is not None:
                plan.lease.release()
            plan = self.plans[cache_key] = self._make(link, key, minute * 60)
        return plan

    def forget(self) -> None:
        """Drop every plan and lease without giving anything back (tests start afresh)."""
        for plan in self.plans.values():
            plan.lease.requests = plan.lease.tokens = plan.lease.cost = 0
        self.__init__()

    def release_leases(self) -> None:
        """Give back what every plan's lease holds unspent (a new minute, or exit)."""
        for plan in self.plans.values():
            plan.lease.release()

    def _make(self, link, key, minute_start: float) -> Plan:
        scopes = [(f"link:{link.id}", link.limits, LINK_LIMITS)]
        if key is not None:
            scopes.append((f"key:{key.id}", key.limits, KEY_LIMITS))
        limits = []
        for scope, values, table in scopes:
            for name, metric, window, code in table:
                limit = values.get(name)
                if limit is None:
                    continue
                window_id, reset_at = self.windows[window]
                limits.append(
                    Limit(
                        key=f"sb:lim:{scope}:{name}:{window_id}",
                        limit=to_micro(limit) if metric == COST else int(limit),
                        reset_at=reset_at,
                        # Kept a minute past the window's end, then Redis drops it.
                        ttl=int(reset_at - minute_start) + 60,
                        metric=metric,
                        code=code,
                        label=name.replace("_", " "),
                    )
                )
        wallet_keys = ()
        if link.is_wallet_billed and link.wallet_id is not None:
            wallet_keys = (redis_balance_key(link.wallet_id), redis_held_key(link.wallet_id))
        keys = [limit.key for limit in limits] + list(wallet_keys)
        tail = [len(limits), int(bool(wallet_keys))]
        for limit in limits:
            tail += [limit.metric + 1, limit.limit, limit.ttl]
        plan = Plan(
            link=link,
            key=key,
            limits=tuple(limits),
            wallet_keys=wallet_keys,
            redis_head=pack_items([len(keys), *keys]),
            redis_tail=pack_items(tail),
            redis_items=1 + len(keys) + 3 + len(tail),
            lease=Lease(),
            header_groups=tuple(
                (metric, HEADER_NAMES[metric], indexes)
                for metric in (REQUESTS, TOKENS)
                if (indexes := tuple(i for i, lim in enumerate(limits) if lim.metric == metric))
            ),
        )
        plan.lease.plan = plan
        return plan


_plans = _Plans()


def leases_release() -> None:
    """Give back every lease's unspent reservations now (at exit)."""
    _plans.release_leases()


def plan(resolution: Resolution, body: dict, route_name: str) -> Admission:
    """What this request would reserve."""
    tokens, cost, _ = _estimate(resolution, body, route_name)
    if tokens < 0 or cost < 0:
        raise _negative(tokens, cost)
    link = resolution.link
    admission = Admission(
        plan=_plans.get(link, resolution.key, time.time()), tokens=tokens, cost=cost
    )
    if link.is_wallet_billed:
        if link.wallet_id is None:
            REJECTIONS.labels("insufficient_quota").inc()
            raise InsufficientQuota("This model is billed from a wallet that has no credits.")
        admission.wallet_id = link.wallet_id
    return admission


# The largest count a request may ask for when its model sets no tighter limit.
MAX_COUNT = 2**31
# n and best_of (OpenAI's ranges): how many outputs one request generates.
COUNT_FIELDS = (("n", 1, 128), ("best_of", 0, 20))


def _check_request_bounds(resolution: Resolution, body: dict) -> None:
    """Every number an estimate reads is an integer in range; each field is checked on its own."""
    model_limit = resolution.model.max_output_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        value = _count(body, name, 1, MAX_COUNT)
        if model_limit and value is not None and value > model_limit:
            raise InvalidRequest(
                f"{name} is {value}, above this model's limit of {model_limit}.", param=name
            )
    for name, low, high in COUNT_FIELDS:
        _count(body, name, low, high)


def _count(body: dict, name: str, low: int, high: int) -> int | None:
    """``body[name]``: absent or null, else an integer (not a bool) from ``low`` to ``high``."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise InvalidRequest(f"{name} must be {kind}.", param=name)
    if value > high:
        raise InvalidRequest(f"{name} must be at most {high}.", param=name)
    return value


async def admit(
    *,
    resolution: Resolution,
    body: dict,
    route_name: str = "",
    event: dict | None = None,
    on_cancelled=None,
) -> Admission:
    """Reserve the request on every limit and wallet; raise 429/402 to refuse it.

    ``event`` (the UsageEvent's ids) is journalled with a database reservation.
    A caller cancelled while its reservation is being made never learns of it:
    once made, ``on_cancelled(admission)`` gets it (default: give it back).
    """
    _check_request_bounds(resolution, body)
    admission = plan(resolution, body, route_name)
    if admission.is_empty:
        return admission
    admission.event = event
    if sb_redis.is_configured():
        try:
            await _redis_admit(admission, on_cancelled or _give_back)
        except sb_redis.UNREACHABLE as exc:
            # The counters live in Redis: refuse rather than guess. A reservation made
            # just before the connection was lost stays counted, the safe side.
            REJECTIONS.labels("service_unavailable").inc()
            raise DependencyUnavailable(
                "Limits cannot be checked right now (Redis is unreachable); retry shortly."
            ) from exc
    else:
        await _shielded(run_sync(_db_admit, admission), admission, on_cancelled or _give_back)
    admission.headers = _rate_headers(admission)
    return admission


async def _shielded(work, admission: Admission, on_cancelled):
    """Await ``work``; if the caller is cancelled first, hand a reservation it made on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _after_cancel(done, admission, on_cancelled))
        raise


def _after_cancel(done: asyncio.Future, admission: Admission, on_cancelled) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    result = done.result()
    if result is None or result[0] == 1:  # the database path returns None once admitted
        on_cancelled(admission)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 2h3m4s."""
    seconds = max(0, int(seconds + 0.999))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


HEADER_NAMES = {
    metric: tuple(
        f"x-ratelimit-{part}-{METRIC_NAMES[metric]}" for part in ("limit", "remaining", "reset")
    )
    for metric in (REQUESTS, TOKENS)
}


def _rate_headers(admission: Admission, *, admitted: bool = True) -> dict[str, str]:
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


def _refuse(admission: Admission, failed: Limit) -> RateLimited:
    retry_after = max(1, int(failed.reset_at - time.time() + 0.999))
    headers = _rate_headers(admission, admitted=False)
    headers["Retry-After"] = str(retry_after)
    REJECTIONS.labels(failed.code).inc()
    what = "rate limit" if failed.code == RATE else "quota"
    return RateLimited(
        f"You exceeded your {what} of {failed.label} for this model; retry in {retry_after}s.",
        code=failed.code,
        headers=headers,
    )


def _negative(tokens: int, cost: int) -> InternalError:
    # A negative reservation would give room instead of taking it. Requests are
    # checked before their estimate, so only a price below zero (or a bug) gets here.
    logger.error("Refused a negative reservation: %d tokens, %d micro-credits", tokens, cost)
    return InternalError("This request's reservation came out negative; it was refused.")


def _short_of_credits() -> InsufficientQuota:
    REJECTIONS.labels("insufficient_quota").inc()
    return InsufficientQuota("Your balance cannot cover this request; top up your wallet.")


# --- Redis ----------------------------------------------------------------------

# KEYS: the counters, then the wallet's balance and held keys when it has one.
# ARGV: tokens, cost (also the wallet hold), requests wanted (a lease when > 1),
# n counters, has wallet (0/1), then per counter its metric (1 requests,
# 2 tokens, 3 cost), limit and TTL.
# Grants the requests wanted, fewer when that would take more than 1/GUARD of
# what is left on a counter or the wallet, and at least one if one fits. A
# counter at or past its limit refuses any amount, zero included.
# Returns {1, granted, values...} when admitted, {0, i, values...} when counter i
# is over its limit, {-1} when the wallet balance is not loaded yet, {-2,
# available} when it is short, {-3} when an amount is negative (refused: it
# would hand out room instead of taking it). One MGET reads everything; a
# counter gets its TTL when it is created.
ADMIT_LUA = """
local GUARD = {GUARD}
local amounts = {1, tonumber(ARGV[1]), tonumber(ARGV[2])}
if amounts[2] < 0 or amounts[3] < 0 then return {-3} end
local grant = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local values = redis.call('MGET', unpack(KEYS))
local out = {1, 1}
for i = 1, n do out[i + 2] = tonumber(values[i] or '0') end
for i = 1, n do
  local base = 2 + i * 3
  local amount = amounts[tonumber(ARGV[base + 1])]
  local left = tonumber(ARGV[base + 2]) - out[i + 2]
  -- A window that usage has used up refuses everything, even a request of nothing.
  if amount > left or left <= 0 then
    out[1], out[2] = 0, i
    return out
  end
  if amount > 0 and grant > 1 then
    grant = math.max(1, math.min(grant, math.floor(left / (amount * GUARD))))
  end
end
if ARGV[5] == '1' then
  local balance = values[n + 1]
  if not balance then return {-1} end
  local available = tonumber(balance) - tonumber(values[n + 2] or '0')
  if available < amounts[3] then return {-2, available} end
  if amounts[3] > 0 and grant > 1 then
    grant = math.max(1, math.min(grant, math.floor(available / (amounts[3] * GUARD))))
  end
  redis.call('INCRBY', KEYS[n + 2], string.format('%d', amounts[3] * grant))
  -- Holds of a process that died unsettled fade out instead of blocking the wallet.
  redis.call('EXPIRE', KEYS[n + 2], 600)
end
for i = 1, n do
  local base = 2 + i * 3
  redis.call('INCRBY', KEYS[i], string.format('%d', amounts[tonumber(ARGV[base + 1])] * grant))
  if not values[i] then redis.call('EXPIRE', KEYS[i], ARGV[base + 3]) end
end
out[2] = grant
return out
""".replace("{GUARD}", str(LEASE_GUARD))

# Adds ARGV[i + 1] to KEYS[i] when that key still exists (an expired window stays
# gone), for the first ARGV[1] keys; then drops the remaining ARGV (request ids)
# from the in-flight journal KEYS[n + 1], in the same atomic step. A counter or a
# hold never goes below zero (a hold that faded and was taken again, say); a
# wallet balance may, and must match the ledger.
SETTLE_LUA = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if ARGV[i + 1] ~= '0' and redis.call('EXISTS', KEYS[i]) == 1 then
    local value = redis.call('INCRBY', KEYS[i], ARGV[i + 1])
    if value < 0 and string.sub(KEYS[i], -8) ~= ':balance' then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
if #ARGV > n + 1 then redis.call('HDEL', KEYS[n + 1], unpack(ARGV, n + 2)) end
return 1
"""

_ADMIT = Script(ADMIT_LUA)
_SETTLE = Script(SETTLE_LUA)


async def _redis_admit(admission: Admission, on_cancelled) -> None:
    lease = admission.plan.lease
    if lease.take(admission):
        return
    refilling = lease.refilling
    if refilling is not None and refilling.get_loop() is asyncio.get_running_loop():
        # Another request is fetching a lease: wait for it rather than ask too.
        await asyncio.wait((refilling,))
        if lease.take(admission):
            return
    size = 1 if lease.refilling is not None else lease.size
    refill = asyncio.ensure_future(_refill(admission, size))
    if size > 1:
        lease.refilling = refill
    # Shielded: a caller that goes away mid-call still settles its reservation.
    result = await _shielded(refill, admission, on_cancelled)
    if result[0] == 0:
        admission.values = result[2:]
        raise _refuse(admission, admission.limits[result[1] - 1])
    if result[0] == -2:
        raise _short_of_credits()
    if result[0] == -3:
        raise _negative(admission.tokens, admission.cost)


async def _refill(admission: Admission, size: int) -> list:
    """One admission script call for ``admission`` and ``size - 1`` more for the lease."""
    plan, lease = admission.plan, admission.plan.lease
    args = plan.redis_head + pack_items((admission.tokens, admission.cost, size)) + plan.redis_tail
    try:
        for _ in range(2):
            result = await _ADMIT.run(plan.redis_items, args)
            if result[0] != -1:
                break
            await _load_wallet_balance(admission.wallet_id)
        if result[0] == 1:
            admission.values = result[2:]
            lease.add(admission, size, result[1])
        return result
    finally:
        if lease.refilling is asyncio.current_task():
            lease.refilling = None


def _give_back(admission: Admission) -> None:
    """Release the reservation of a request cancelled while it was being admitted."""
    from .accounting import settlement_queue

    settlement_queue(settlement_for(admission, usage=Usage(), cost_micro=0, released=True))


async def _load_wallet_balance(wallet_id: int) -> None:
    from orgs.models import Wallet

    balance = await run_sync(
        lambda: Wallet.objects.filter(pk=wallet_id).values_list("balance", flat=True).first()
    )
    await sb_redis.async_client().set(redis_balance_key(wallet_id), to_micro(balance or 0), nx=True)


# --- Database --------------------------------------------------------------------


def _db_admit(admission: Admission) -> None:
    from django.db import transaction
    from django.db.models import F

    from orgs.models import Wallet

    from ..models import LimitCounter

    now = datetime.now(UTC)
    limits, amounts = admission.limits, admission.amounts
    keys = sorted(limit.key for limit in limits)
    with transaction.atomic():
        if keys:
            LimitCounter.objects.bulk_create(
                [
                    LimitCounter(
                        key=limit.key,
                        value=0,
                        expires_at=datetime.fromtimestamp(limit.reset_at, UTC),
                    )
                    for limit in limits
                ],
                ignore_conflicts=True,
            )
        rows = {
            row.key: row
            for row in LimitCounter.objects.select_for_update().filter(key__in=keys).order_by("key")
        }
        admission.values = [rows[limit.key].value for limit in limits]
        for limit, value in zip(limits, admission.values, strict=True):
            # A window that usage has used up refuses everything, even a request of nothing.
            if value + amounts[limit.metric] > limit.limit or value >= limit.limit:
                raise _refuse(admission, limit)
        if admission.wallet_id is not None:
            wallet = Wallet.objects.select_for_update().get(pk=admission.wallet_id)
            if to_micro(wallet.balance - wallet.held) < admission.hold:
                raise _short_of_credits()
            # QuerySet.update, not save(): a save would signal a cache invalidation.
            Wallet.objects.filter(pk=wallet.pk).update(held=F("held") + _credits(admission.hold))
        for limit in limits:
            LimitCounter.objects.filter(pk=rows[limit.key].pk).update(
                value=F("value") + amounts[limit.metric]
            )
        if admission.event is not None:
            journal.db_add(admission.event, admission)
    LimitCounter.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()


def _credits(micro: int):
    from orgs.services import MICRO

    return micro * MICRO


# --- Settlement ------------------------------------------------------------------


@dataclass(slots=True)
class Settlement:
    """What a finished request changes: counter deltas, hold released, wallet charge."""

    admission: Admission
    deltas: tuple[int, int, int]  # per metric: what was used minus what was reserved
    charge: int  # micro-credits charged to the wallet


def settlement_for(
    admission: Admission, *, usage: Usage, cost_micro: int, released: bool
) -> Settlement:
    """Deltas that turn the reservation into what was used (all of it back when released)."""
    if released:
        deltas = (-1, -admission.tokens, -admission.cost)
    else:
        # An upstream's usage block is not trusted to be positive: what a request
        # used is never less than nothing, and never credits a wallet.
        used = max(usage.prompt_tokens, 0) + max(usage.completion_tokens, 0)
        cost_micro = max(cost_micro, 0)
        deltas = (0, used - admission.tokens, cost_micro - admission.cost)
    charge = 0 if released or admission.wallet_id is None else cost_micro
    return Settlement(admission=admission, deltas=deltas, charge=charge)


def _counter_deltas(settlements: list[Settlement]) -> dict[str, int]:
    """Every settlement's counter changes, summed per counter key."""
    from collections import defaultdict

    deltas: dict[str, int] = defaultdict(int)
    for settlement in settlements:
        for limit in settlement.admission.limits:
            deltas[limit.key] += settlement.deltas[limit.metric]
    return deltas


def _redis_deltas(settlements: list[Settlement]) -> dict[str, int]:
    """Every settlement summed per Redis key: counters, wallet holds and balances."""
    deltas = _counter_deltas(settlements)
    for settlement in settlements:
        admission = settlement.admission
        if admission.wallet_id is not None:
            balance, held = admission.plan.wallet_keys
            deltas[held] = deltas.get(held, 0) - admission.hold
            deltas[balance] = deltas.get(balance, 0) - settlement.charge
    return {key: delta for key, delta in deltas.items() if delta}


def settle_args(deltas: dict[str, int], done: list[str]) -> tuple[list, list]:
    """SETTLE_LUA's keys and arguments: counter deltas, then journal entries to drop."""
    keys = [*deltas, journal.inflight_key(journal.process_name())]
    return keys, [len(deltas), *deltas.values(), *done]


async def settle_in_redis(settlements: list[Settlement], *, done: list[str] = ()) -> None:
    """Apply a batch of settlements and drop their journal entries, in one script call."""
    deltas = _redis_deltas(settlements)
    if deltas or done:
        await _SETTLE(*settle_args(deltas, list(done)))


def settle_in_redis_now(settlements: list[Settlement], *, done: list[str] = ()) -> None:
    """The same, from sync code (at interpreter exit)."""
    deltas = _redis_deltas(settlements)
    if deltas or done:
        keys, args = settle_args(deltas, list(done))
        sb_redis.sync_client().eval(SETTLE_LUA, len(keys), *keys, *args)


def settle_in_database(settlements: list[Settlement]) -> None:
    """Apply settlements to counters and wallet holds (inside the usage flush transaction)."""
    from collections import defaultdict

    from django.db.models import DecimalField, F, Value
    from django.db.models.functions import Greatest

    from orgs.models import Wallet

    from ..models import LimitCounter

    held: dict[int, int] = defaultdict(int)
    for settlement in settlements:
        if settlement.admission.wallet_id is not None:
            held[settlement.admission.wallet_id] += settlement.admission.hold
    # Neither a counter nor a hold goes below zero, whatever a settlement says.
    for key, delta in _counter_deltas(settlements).items():
        if delta:
            LimitCounter.objects.filter(key=key).update(value=Greatest(F("value") + delta, 0))
    zero = Value(0, output_field=DecimalField())
    for wallet_id, amount in held.items():
        Wallet.objects.filter(pk=wallet_id).update(
            held=Greatest(F("held") - _credits(amount), zero)
        )
