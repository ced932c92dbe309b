"""The soak's traffic: an asyncio client (httpx) sending a mix of requests for a while.

Each request is one ``Outcome``: what was asked, when, the status (None when no
answer came: a connection cut, a timeout) and the gateway's request id, from which
the checks find its UsageEvent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from dataclasses import dataclass

import httpx

from .world import MAX_TOKENS

HI = [{"role": "user", "content": "Say something nice about soak tests"}]


@dataclass
class Outcome:
    """One request of the soak and what became of it."""

    kind: str
    started: float  # time.monotonic()
    ended: float
    status: int | None
    request_id: str = ""
    error: str = ""


# kind: (weight, model, key name, stream, abort after this many chunks)
KINDS = {
    "json": (4, "soak-chat", "plain", False, None),
    "stream": (3, "soak-chat", "plain", True, None),
    "aborted": (2, "soak-chat", "plain", True, 2),
    "billed": (2, "soak-chat", "billed", False, None),
    "limited": (2, "soak-chat", "limited", False, None),
    "counted": (2, "soak-chat", "counted", False, None),
    "failover": (1, "soak-failover", "plain", False, None),
    "broken": (1, "soak-broken", "plain", False, None),
}


class Traffic:
    """Mixed requests from ``concurrency`` loops until ``stop`` is set."""

    def __init__(self, url: str, keys: dict, *, concurrency: int, seed: int = 19) -> None:
        self.url = f"{url}/v1/chat/completions"
        self.keys = keys
        self.concurrency = concurrency
        self.outcomes: list[Outcome] = []
        self.stop = asyncio.Event()
        self.random = random.Random(seed)
        self.plain_keys = itertools.cycle(keys["plain_keys"])
        names = list(KINDS)
        self.choices = [name for name in names for _ in range(KINDS[name][0])]

    async def run(self, seconds: float) -> list[Outcome]:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0)
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            loops = [asyncio.create_task(self._loop(client)) for _ in range(self.concurrency)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=seconds)
            self.stop.set()
            await asyncio.gather(*loops)
        return self.outcomes

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            kind = self.random.choice(self.choices)
            self.outcomes.append(await self.one(client, kind))

    def _key(self, name: str) -> str:
        return next(self.plain_keys) if name == "plain" else self.keys[f"{name}_key"]

    async def one(self, client: httpx.AsyncClient, kind: str) -> Outcome:
        _, model, key_name, stream, abort_after = KINDS[kind]
        body = {"model": model, "messages": HI, "max_tokens": MAX_TOKENS, "stream": stream}
        if stream:
            # A little pace, so that streams are in flight when a fault strikes.
            body["fake_upstream"] = {"chunk_delay_ms": 20}
        headers = {"Authorization": f"Bearer {self._key(key_name)}"}
        outcome = Outcome(kind, time.monotonic(), 0.0, None)
        try:
            async with client.stream("POST", self.url, json=body, headers=headers) as response:
                outcome.status = response.status_code
                outcome.request_id = response.headers.get("x-request-id", "")
                chunks = 0
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        chunks += 1
                        if abort_after is not None and chunks >= abort_after:
                            break  # leaving the block closes the connection mid-stream
                        if stream and '"error"' in line:
                            outcome.error = line[:200]  # a stream that ended in an error
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:200]
        outcome.ended = time.monotonic()
        return outcome
