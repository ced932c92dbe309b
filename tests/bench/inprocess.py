"""The gateway's ASGI app called in-process, without a server: time and profile per request.

Wall-clock benches through wrk measure the server, the kernel and the machine's load as
well; this calls ``panel.asgi.application`` directly from a loop (uvloop, as uvicorn runs
it) against the fake upstream, one request at a time, so what it prints is the app's own
cost: the median and mean microseconds of CPU a request (``time.process_time``), and with
``--profile`` the functions where cProfile saw that time go (issue 20: measure first).

    python tests/bench/inprocess.py --requests 5000
    python tests/bench/inprocess.py --requests 3000 --profile --sort tottime --top 40
    python tests/bench/inprocess.py --modes sse --redis redis://127.0.0.1:6379/15

The database is a throw-away embedded one, seeded as `run.py` seeds it. It prints numbers
and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from panel.http import DISCONNECT, ClientLeft  # noqa: E402
from tests.bench.run import BODY, MODES, TARGETS, environment, migrate_and_seed  # noqa: E402
from tests.servers import free_port, wait_until_serving  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests a cell")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--modes", default="json,sse")
    parser.add_argument("--targets", default="gateway")
    parser.add_argument("--redis", default="", help="limits in this Redis (emptied first)")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured requests")
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--dump", help="also write cProfile's stats to this file (pstats)")
    return parser.parse_args(argv)


def scope(path: str, key: str, body: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        # What production's protocol (panel.http) puts in each request's scope.
        DISCONNECT: ClientLeft(),
    }


async def one(app, key: str, body: bytes) -> int:
    """One request through the ASGI app; its status (the body is read and dropped)."""
    sent = False
    done = asyncio.Event()
    status = 0

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            done.set()

    await app(scope("/v1/chat/completions", key, body), receive, send)
    return status


class GCTimer:
    """Collections by generation and the time spent in them (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.counts[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._started


async def cell(app, key: str, body: bytes, args, profiler) -> list[float]:
    for _ in range(args.warmup):
        status = await one(app, key, body)
        if status != 200:
            raise SystemExit(f"warm-up request answered {status}")
    gc_timer = GCTimer()
    gc.callbacks.append(gc_timer)
    try:
        costs = await measured(app, key, body, args, profiler)
    finally:
        gc.callbacks.remove(gc_timer)
    print(
        f"  gc: {gc_timer.counts} collections (gen 0/1/2), {1e3 * gc_timer.seconds:.1f} ms in all, "
        f"{1e6 * gc_timer.seconds / len(costs):.1f} us a request; "
        f"{len(gc.get_objects())} objects tracked, {gc.get_freeze_count()} frozen",
        flush=True,
    )
    return costs


async def measured(app, key: str, body: bytes, args, profiler) -> list[float]:
    costs = []
    for _ in range(args.requests):
        if profiler is not None:
            profiler.enable()
        started = time.process_time()
        await one(app, key, body)
        costs.append(time.process_time() - started)
        if profiler is not None:
            profiler.disable()
    return costs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sb-inprocess-"))
    env = environment(work, args.redis)
    os.environ.update(env)
    fake_port = free_port()
    py = sys.executable
    fake = None
    try:
        if args.redis:
            import redis

            redis.Redis.from_url(args.redis).flushdb()
        key = migrate_and_seed(env, fake_port)
        fake = subprocess.Popen(
            [py, "-m", "fakeupstream", "--port", str(fake_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_serving(f"http://127.0.0.1:{fake_port}/_fake/health")
        import uvloop

        uvloop.install()
        from panel.asgi import application, settle_heap

        settle_heap()  # as uvicorn's lifespan startup does in production
        profiler = cProfile.Profile() if args.profile else None

        async def run() -> None:
            for target in args.targets.split(","):
                for mode in args.modes.split(","):
                    body = json.dumps({**BODY, "model": TARGETS[target], **MODES[mode]}).encode()
                    costs = await cell(application, key, body, args, profiler)
                    print(
                        f"{target:8} {mode:5} cpu/request: median "
                        f"{1e6 * statistics.median(costs):.0f} us, mean "
                        f"{1e6 * statistics.fmean(costs):.0f} us ({len(costs)} requests)",
                        flush=True,
                    )
            from ai.gateway import pipeline
            from ai.gateway.upstream import close_session

            await pipeline.shutdown()
            await close_session()

        asyncio.run(run())
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
            if args.dump:
                profiler.dump_stats(args.dump)
    finally:
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
