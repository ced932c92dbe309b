"""The Redis admission path: one script call reserves a request, or a lease of several.

A process that admits many requests on the same link and key reserves them
from Redis several at a time (a ``Lease``) and spends the reservation locally,
so most admissions need no round trip. Redis grants a lease only out of
plenty: at most 1/LEASE_GUARD of what is left on every counter and the
wallet, otherwise exactly one request, so near a limit every admission is
exact and shared by all processes. What a lease holds unspent is given back
after GATEWAY_LEASE_SECONDS, when the minute turns, and at exit; a process
that dies leaves it in the in-flight journal, which the reconciler settles.
Each request still settles its own usage, so counters and charges are exact.

This module owns the leases of this process (one per plan) and the admission
script with its packed arguments.
"""

from __future__ import annotations

import asyncio
import atexit
import time
from dataclasses import dataclass, field

from django.conf import settings

from orgs.services import to_micro
from panel import redis as sb_redis
from panel.db import run_sync
from panel.redis import Script, pack_items

from . import journal, ledger
from .observability import ADMISSION_CALLS
from .reservations import (
    Admission,
    Plan,
    Settlement,
    balance_key,
    negative,
    refusal,
    short_of_credits,
)

LEASE_GUARD = 10
LEASE_MAX = 512  # requests in one lease
LEASE_PACE = 0.25  # a lease spent faster than this doubles the next one

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

_ADMIT = Script(ADMIT_LUA)


@dataclass(slots=True, eq=False)
class Lease:
    """Reservations this process holds for one plan: requests, tokens, micro-credits."""

    plan: Plan
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
    journal_id: str | None = None  # its entry in the in-flight journal while it holds any
    # The admission script's arguments around the two per-request ones (tokens, cost).
    redis_head: bytes = b""
    redis_tail: bytes = b""
    redis_items: int = 0

    def __post_init__(self) -> None:
        limits, wallet_keys = self.plan.limits, self.plan.wallet_keys
        keys = [limit.key for limit in limits] + list(wallet_keys)
        tail = [len(limits), int(bool(wallet_keys))]
        for limit in limits:
            tail += [limit.metric + 1, limit.limit, limit.ttl]
        self.redis_head = pack_items([len(keys), *keys])
        self.redis_tail = pack_items(tail)
        self.redis_items = 1 + len(keys) + 3 + len(tail)

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
        if asked == self.size:  # a refill of the current size tells how to size the next
            self._resize(asked, grant)
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
            seconds = settings.GATEWAY_LEASE_SECONDS
            self.expiry = asyncio.get_running_loop().call_later(seconds, self.release)

    def _resize(self, asked: int, grant: int) -> None:
        now = time.monotonic()
        if grant < asked:  # Redis cut it short: a limit or the balance is near
            self.size = max(1, grant)
        elif now - self.refilled_at < LEASE_PACE:
            self.size = min(self.size * 2, LEASE_MAX)
        elif now - self.refilled_at > 4 * LEASE_PACE:
            self.size = max(1, self.size // 2)
        self.refilled_at = now

    def release(self) -> None:
        """Give back whatever is unspent (settled with the next usage flush)."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.requests or self.tokens or self.cost or self.journal_id:
            ledger.settlement_queue(self._unspent(), done=journal.lease_fields(self.journal_id))
        self.requests = self.tokens = self.cost = 0
        self.journal_id = None

    def _unspent(self) -> Settlement:
        unspent = Admission(
            plan=self.plan, wallet_id=self.wallet_id, tokens=self.tokens, cost=self.cost
        )
        return Settlement(
            admission=unspent, deltas=(-self.requests, -self.tokens, -self.cost), charge=0
        )


class Leases:
    """This process's lease of each (link, key) plan in the current minute."""

    def __init__(self) -> None:
        self.minute = -1
        self.leases: dict[tuple[int, int | None], Lease] = {}

    def get(self, plan: Plan) -> Lease:
        if plan.minute != self.minute:
            self.release_all()
            self.minute, self.leases = plan.minute, {}
        owner = (plan.link.id, plan.key.id if plan.key is not None else None)
        lease = self.leases.get(owner)
        if lease is None or lease.plan is not plan:
            if lease is not None:
                lease.release()  # the link or key changed: a new plan
            lease = self.leases[owner] = Lease(plan)
        return lease

    def release_all(self) -> None:
        """Give back what every lease holds unspent (a new minute, or exit)."""
        for lease in self.leases.values():
            lease.release()

    def reset(self) -> None:
        """Drop every lease without giving anything back (tests start afresh)."""
        for lease in self.leases.values():
            if lease.expiry is not None:
                lease.expiry.cancel()
        self.__init__()


leases = Leases()
atexit.register(leases.release_all)  # registered after ledger's exit flush, so it runs first


async def redis_admit(admission: Admission, shielded) -> None:
    """Reserve ``admission`` from the lease, else from Redis; raise 429/402 to refuse it.

    ``shielded(work)`` awaits the script call so that a caller cancelled meanwhile
    still has its reservation handled.
    """
    lease = leases.get(admission.plan)
    if lease.take(admission):
        return
    refilling = lease.refilling
    if refilling is not None and refilling.get_loop() is asyncio.get_running_loop():
        # Another request is fetching a lease: wait for it rather than ask too.
        await asyncio.wait((refilling,))
        if lease.take(admission):
            return
    size = 1 if lease.refilling is not None else lease.size
    refill = asyncio.ensure_future(_refill(lease, admission, size))
    if size > 1:
        lease.refilling = refill
    result = await shielded(refill)
    if result[0] == 0:
        admission.values = result[2:]
        raise refusal(admission, admission.limits[result[1] - 1])
    if result[0] == -2:
        raise short_of_credits()
    if result[0] == -3:
        raise negative(admission.tokens, admission.cost)


async def _refill(lease: Lease, admission: Admission, size: int) -> list:
    """One admission script call for ``admission`` and ``size - 1`` more for the lease."""
    args = (
        lease.redis_head + pack_items((admission.tokens, admission.cost, size)) + lease.redis_tail
    )
    try:
        for _ in range(2):
            ADMISSION_CALLS.inc()
            result = await _ADMIT.run(lease.redis_items, args)
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


async def _load_wallet_balance(wallet_id: int) -> None:
    from orgs.models import Wallet

    balance = await run_sync(
        lambda: Wallet.objects.filter(pk=wallet_id).values_list("balance", flat=True).first()
    )
    await sb_redis.async_client().set(balance_key(wallet_id), to_micro(balance or 0), nx=True)
