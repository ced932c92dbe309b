"""CPU a call of the upstream client: aiohttp's session against ``ai.gateway.http1``.

One POST at a time from a uvloop loop to the fake upstream (its own process), each answer
read whole; what is printed is this process's CPU a call (``time.process_time``), the
client's own cost and its syscalls. Issue 20 measured 125 against 35 us here with a bare
protocol, which is why the request path has its own client.

    python tests/bench/upstream_client.py --calls 5000 --rounds 3

It prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ai.gateway import http1  # noqa: E402
from tests.servers import free_port, wait_until_serving  # noqa: E402

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"Content-Type": "application/json", "X-Request-Id": "0123", "Authorization": "Bearer x"}


async def _aiohttp(url: str, calls: int) -> float:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5, sock_read=30)
    async with aiohttp.ClientSession(
        connector=connector,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def call() -> None:
            response = await session.post(url, data=BODY, headers=HEADERS, timeout=timeout)
            async with response:
                await response.read()

        return await _timed(call, calls)


async def _http1(url: str, calls: int) -> float:
    pool = http1.Pool()

    async def call() -> None:
        response = await http1.post(pool, url, BODY, HEADERS, total=60, connect=5, read=30)
        async with response:
            await response.read()

    try:
        return await _timed(call, calls)
    finally:
        pool.close()


async def _timed(call, calls: int) -> float:
    for _ in range(300):
        await call()
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "fakeupstream", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for round_ in range(1, args.rounds + 1):
            slow = uvloop.run(_aiohttp(url, args.calls))
            fast = uvloop.run(_http1(url, args.calls))
            print(
                f"round {round_}: aiohttp {slow:.1f} us/call, http1 {fast:.1f} us/call "
                f"({slow - fast:.1f} us less)"
            )
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
