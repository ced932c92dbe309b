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

import time
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings

from orgs.services import redis_balance_key, redis_held_key, to_micro
from panel import redis as sb_redis
from panel.db import run_sync
from panel.errors import InsufficientQuota, InvalidRequest, RateLimited
from panel.redis_pipe import Script

from .accounting import Usage, cost_of, estimate_prompt
from .observability import REJECTIONS
from .resolve import Resolution

RATE, QUOTA = "rate_limit_exceeded", "quota_exceeded"


@dataclass(slots=True)
class Counter:
    key: str
    amount: int
    limit: int
    reset_at: float  # epoch seconds at the end of the window
    metric: str  # requests, tokens or cost
    code: str  # RATE or QUOTA
    label: str
    value: int = 0  # the total before this request, filled in by admission


@dataclass(slots=True)
class Admission:
    counters: list[Counter] = field(default_factory=list)
    wallet_id: int | None = None
    hold: int = 0  # micro-credits reserved on the wallet
    tokens: int = 0
    cost: int = 0  # micro-credits
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.counters and self.wallet_id is None


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
    ("requests_per_minute", "requests", "minute", RATE),
    ("requests_per_day", "requests", "day", RATE),
    ("tokens_per_minute", "tokens", "minute", RATE),
    ("tokens_per_day", "tokens", "day", QUOTA),
    ("tokens_per_month", "tokens", "month", QUOTA),
    ("cost_per_month", "cost", "month", QUOTA),
)
KEY_LIMITS = (
    ("requests_per_minute", "requests", "minute", RATE),
    ("cost_per_month", "cost", "month", QUOTA),
)


def _estimate(resolution: Resolution, body: dict, route_name: str) -> tuple[int, int, int]:
    """Reserved tokens, reserved micro-credits and images, before the call."""
    model = resolution.model
    if route_name == "images.generations":
        images = body.get("n", 1) if isinstance(body.get("n", 1), int) else 1
        return 0, to_micro(cost_of(model, Usage(images=max(images, 1)))), images
    prompt = estimate_prompt(body)
    output = 0
    if route_name != "embeddings":
        output = body.get("max_tokens") or body.get("max_completion_tokens")
        output = output or model.max_output_tokens or settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS
    usage = Usage(prompt_tokens=prompt, completion_tokens=output)
    return prompt + output, to_micro(cost_of(model, usage)), 0


def plan(resolution: Resolution, body: dict, route_name: str) -> Admission:
    """What this request would reserve."""
    tokens, cost, _ = _estimate(resolution, body, route_name)
    admission = Admission(tokens=tokens, cost=cost)
    amounts = {"requests": 1, "tokens": tokens, "cost": cost}
    windows = _windows(time.time())
    scopes = [(f"link:{resolution.link.id}", resolution.link.limits, LINK_LIMITS)]
    if resolution.key is not None:
        scopes.append((f"key:{resolution.key.id}", resolution.key.limits, KEY_LIMITS))
    for scope, limits, table in scopes:
        for name, metric, window, code in table:
            limit = limits.get(name)
            if limit is None:
                continue
            window_id, reset_at = windows[window]
            admission.counters.append(
                Counter(
                    key=f"sb:lim:{scope}:{name}:{window_id}",
                    amount=amounts[metric],
                    limit=to_micro(limit) if metric == "cost" else int(limit),
                    reset_at=reset_at,
                    metric=metric,
                    code=code,
                    label=name.replace("_", " "),
                )
            )
    if resolution.link.is_wallet_billed:
        if resolution.link.wallet_id is None:
            REJECTIONS.labels("insufficient_quota").inc()
            raise InsufficientQuota("This model is billed from a wallet that has no credits.")
        admission.wallet_id, admission.hold = resolution.link.wallet_id, cost
    return admission


def _check_request_bounds(resolution: Resolution, body: dict) -> None:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InvalidRequest("max_tokens must be a positive integer.", param="max_tokens")
    limit = resolution.model.max_output_tokens
    if max_tokens is not None and limit and max_tokens > limit:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}, above this model's limit of {limit}.",
            param="max_tokens",
        )


async def admit(*, resolution: Resolution, body: dict, route_name: str = "") -> Admission:
    """Reserve the request on every limit and wallet; raise 429/402 to refuse it."""
    _check_request_bounds(resolution, body)
    admission = plan(resolution, body, route_name)
    if admission.is_empty:
        return admission
    if sb_redis.is_configured():
        await _redis_admit(admission)
    else:
        await run_sync(_db_admit, admission)
    admission.headers = _rate_headers(admission.counters)
    return admission


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 2h3m4s."""
    seconds = max(0, int(seconds + 0.999))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _rate_headers(counters: list[Counter], *, admitted: bool = True) -> dict[str, str]:
    headers = {}
    now = time.time()
    for metric in ("requests", "tokens"):
        relevant = [c for c in counters if c.metric == metric]
        if not relevant:
            continue
        used = [(c, c.value + (c.amount if admitted else 0)) for c in relevant]
        tightest, total = min(used, key=lambda pair: pair[0].limit - pair[1])
        headers[f"x-ratelimit-limit-{metric}"] = str(tightest.limit)
        headers[f"x-ratelimit-remaining-{metric}"] = str(max(0, tightest.limit - total))
        headers[f"x-ratelimit-reset-{metric}"] = _duration(tightest.reset_at - now)
    return headers


def _refuse(admission: Admission, failed: Counter) -> RateLimited:
    retry_after = max(1, int(failed.reset_at - time.time() + 0.999))
    headers = _rate_headers(admission.counters, admitted=False)
    headers["Retry-After"] = str(retry_after)
    REJECTIONS.labels(failed.code).inc()
    what = "rate limit" if failed.code == RATE else "quota"
    return RateLimited(
        f"You exceeded your {what} of {failed.label} for this model; retry in {retry_after}s.",
        code=failed.code,
        headers=headers,
    )


# --- Redis ----------------------------------------------------------------------

# KEYS: counters..., then wallet balance and held when ARGV[2] == 1.
# ARGV: n, has_wallet, hold, then amount and limit and ttl per counter.
# Returns {1, values...} when admitted, {0, i, value} for counter i over its limit,
# {-1} when the wallet balance is not loaded yet, {-2, available} when it is short.
ADMIT_LUA = """
local n = tonumber(ARGV[1])
local values = {}
for i = 1, n do
  local amount = tonumber(ARGV[3 + (i - 1) * 3 + 1])
  local limit = tonumber(ARGV[3 + (i - 1) * 3 + 2])
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value + amount > limit then return {0, i, value} end
  values[i] = value
end
if ARGV[2] == '1' then
  local balance = redis.call('GET', KEYS[n + 1])
  if not balance then return {-1} end
  local held = tonumber(redis.call('GET', KEYS[n + 2]) or '0')
  local available = tonumber(balance) - held
  if available < tonumber(ARGV[3]) then return {-2, available} end
  redis.call('INCRBY', KEYS[n + 2], ARGV[3])
  -- Holds of a process that died unsettled fade out instead of blocking the wallet.
  redis.call('EXPIRE', KEYS[n + 2], 600)
end
for i = 1, n do
  local amount = tonumber(ARGV[3 + (i - 1) * 3 + 1])
  local ttl = tonumber(ARGV[3 + (i - 1) * 3 + 3])
  redis.call('INCRBY', KEYS[i], amount)
  redis.call('EXPIRE', KEYS[i], ttl)
end
return {1, unpack(values)}
"""

# Adds ARGV[i] to KEYS[i] when that key still exists (an expired window stays gone).
INCR_EXISTING_LUA = """
for i = 1, #KEYS do
  if ARGV[i] ~= '0' and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], ARGV[i])
  end
end
return 1
"""

_scripts: dict = {}


def _script(client, source: str):
    script = _scripts.get((id(client), source))
    if script is None:
        script = client.register_script(source)
        _scripts[(id(client), source)] = script
    return script


def _keys(admission: Admission) -> list[str]:
    keys = [c.key for c in admission.counters]
    if admission.wallet_id is not None:
        keys += [redis_balance_key(admission.wallet_id), redis_held_key(admission.wallet_id)]
    return keys


_ADMIT = Script(ADMIT_LUA)


async def _redis_admit(admission: Admission) -> None:
    client = sb_redis.async_client()
    now = time.time()
    args = [len(admission.counters), int(admission.wallet_id is not None), admission.hold]
    for c in admission.counters:
        args += [c.amount, c.limit, max(60, int(c.reset_at - now) + 60)]
    for _ in range(2):
        result = await _ADMIT(keys=_keys(admission), args=args)
        if result[0] != -1:
            break
        await _load_wallet_balance(client, admission.wallet_id)
    if result[0] == 0:
        failed = admission.counters[result[1] - 1]
        failed.value = result[2]
        raise _refuse(admission, failed)
    if result[0] == -2:
        REJECTIONS.labels("insufficient_quota").inc()
        raise InsufficientQuota("Your balance cannot cover this request; top up your wallet.")
    for counter, value in zip(admission.counters, result[1:], strict=False):
        counter.value = value


async def _load_wallet_balance(client, wallet_id: int) -> None:
    from orgs.models import Wallet

    balance = await run_sync(
        lambda: Wallet.objects.filter(pk=wallet_id).values_list("balance", flat=True).first()
    )
    await client.set(redis_balance_key(wallet_id), to_micro(balance or 0), nx=True)


# --- Database --------------------------------------------------------------------


def _db_admit(admission: Admission) -> None:
    from django.db import transaction
    from django.db.models import F

    from orgs.models import Wallet

    from ..models import LimitCounter

    now = datetime.now(UTC)
    keys = sorted(c.key for c in admission.counters)
    with transaction.atomic():
        if keys:
            expires = {c.key: datetime.fromtimestamp(c.reset_at, UTC) for c in admission.counters}
            LimitCounter.objects.bulk_create(
                [LimitCounter(key=k, value=0, expires_at=expires[k]) for k in keys],
                ignore_conflicts=True,
            )
        rows = {
            row.key: row
            for row in LimitCounter.objects.select_for_update().filter(key__in=keys).order_by("key")
        }
        for counter in admission.counters:
            counter.value = rows[counter.key].value
            if counter.value + counter.amount > counter.limit:
                raise _refuse(admission, counter)
        if admission.wallet_id is not None:
            wallet = Wallet.objects.select_for_update().get(pk=admission.wallet_id)
            if to_micro(wallet.balance - wallet.held) < admission.hold:
                REJECTIONS.labels("insufficient_quota").inc()
                raise InsufficientQuota(
                    "Your balance cannot cover this request; top up your wallet."
                )
            # QuerySet.update, not save(): a save would signal a cache invalidation.
            Wallet.objects.filter(pk=wallet.pk).update(held=F("held") + _credits(admission.hold))
        for counter in admission.counters:
            LimitCounter.objects.filter(pk=rows[counter.key].pk).update(
                value=F("value") + counter.amount
            )
    LimitCounter.objects.filter(expires_at__lt=now - timedelta(days=1)).delete()


def _credits(micro: int):
    from orgs.services import MICRO

    return micro * MICRO


# --- Settlement ------------------------------------------------------------------


@dataclass(slots=True)
class Settlement:
    """What a finished request changes: counter deltas, hold released, wallet charge."""

    admission: Admission
    deltas: list[int]
    charge: int  # micro-credits charged to the wallet


def settlement_for(
    admission: Admission, *, usage: Usage, cost_micro: int, released: bool
) -> Settlement:
    """Deltas that turn the reservation into what was used (all of it back when released)."""
    actual = {
        "requests": 0 if released else 1,
        "tokens": 0 if released else usage.prompt_tokens + usage.completion_tokens,
        "cost": 0 if released else cost_micro,
    }
    deltas = [actual[c.metric] - c.amount for c in admission.counters]
    charge = 0 if released or admission.wallet_id is None else cost_micro
    return Settlement(admission=admission, deltas=deltas, charge=charge)


def _deltas(settlements: list[Settlement]) -> dict[str, int]:
    """Every settlement summed per Redis key: counters, wallet holds and balances."""
    from collections import defaultdict

    deltas: dict[str, int] = defaultdict(int)
    for settlement in settlements:
        admission = settlement.admission
        for counter, delta in zip(admission.counters, settlement.deltas, strict=True):
            deltas[counter.key] += delta
        if admission.wallet_id is not None:
            deltas[redis_held_key(admission.wallet_id)] -= admission.hold
            deltas[redis_balance_key(admission.wallet_id)] -= settlement.charge
    return deltas


async def settle_in_redis(settlements: list[Settlement]) -> None:
    """Apply a batch of settlements to Redis in one script call, whatever its size."""
    deltas = {key: delta for key, delta in _deltas(settlements).items() if delta}
    if deltas:
        client = sb_redis.async_client()
        await _script(client, INCR_EXISTING_LUA)(keys=list(deltas), args=list(deltas.values()))


def settle_in_redis_now(settlements: list[Settlement]) -> None:
    """The same, from sync code (at interpreter exit)."""
    deltas = {key: delta for key, delta in _deltas(settlements).items() if delta}
    if deltas:
        sb_redis.sync_client().eval(INCR_EXISTING_LUA, len(deltas), *deltas, *deltas.values())


def settle_in_database(settlements: list[Settlement]) -> None:
    """Apply settlements to counters and wallet holds (inside the usage flush transaction)."""
    from collections import defaultdict

    from django.db.models import F

    from orgs.models import Wallet

    from ..models import LimitCounter

    counter_deltas: dict[str, int] = defaultdict(int)
    held: dict[int, int] = defaultdict(int)
    for settlement in settlements:
        for counter, delta in zip(settlement.admission.counters, settlement.deltas, strict=True):
            counter_deltas[counter.key] += delta
        if settlement.admission.wallet_id is not None:
            held[settlement.admission.wallet_id] += settlement.admission.hold
    for key, delta in counter_deltas.items():
        if delta:
            LimitCounter.objects.filter(key=key).update(value=F("value") + delta)
    for wallet_id, amount in held.items():
        Wallet.objects.filter(pk=wallet_id).update(held=F("held") - _credits(amount))
