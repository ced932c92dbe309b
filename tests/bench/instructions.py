"""`make bench-instructions`: the gateway's instructions per request, under callgrind.

Wall-clock benches on a shared 2-core VM drift by 2x; the number of instructions a
request costs does not depend on the machine's load. This starts the fake upstream
(normally) and the gateway (one uvicorn process, as tests/bench/run.py starts it,
throw-away embedded SQLite, its log settings) under `valgrind --tool=callgrind` with
instrumentation off, sends warm-up requests, turns instrumentation on
(`callgrind_control`), then sends N requests one after the other from a client outside
valgrind and dumps the counters, one file a thread. Per request it prints the event
loop's thread (`loop`: the request path, and the loop's side of the timed work), every
other thread (`others`: Django's sync thread writing the usage batches and reloading
caches) and their sum. `loop` repeats within ~1-2 % on a loaded machine; `others`
depends on how many rows a 0.2 s usage batch carries, so on the pace the machine
allowed (`--rate` fixes the pace, if the gateway can keep up with it).

    python tests/bench/instructions.py --requests 200
    python tests/bench/instructions.py --tree /tmp/m-9c621ee   # another checkout's code

Targets: `gateway` (a link without limits), and with `--redis` also `limited` (every
limit and a wallet, limits in that Redis; its database is emptied first, so give it one
of its own). It prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from panel.http import uvicorn_args  # noqa: E402
from tests.bench.run import BODY, MODES, TARGETS, migrate_and_seed  # noqa: E402
from tests.bench.run import environment as bench_environment  # noqa: E402
from tests.servers import free_port  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests a cell")
    parser.add_argument("--warmup", type=int, default=30, help="requests a cell before measuring")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests a second (0: as fast as they come back); see send_paced",
    )
    parser.add_argument("--modes", default="json,sse", type=_choices(MODES))
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose gateway to run")
    parser.add_argument(
        "--redis", default="", help="also measure the limited link, limits in this Redis"
    )
    parser.add_argument(
        "--untimed",
        action="store_true",
        help="leave the timed work out: usage batches and activity writes once an hour",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="LOG_LEVEL (the bench's WARNING; INFO as deployed: a JSON line a request)",
    )
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps in this directory")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.rate < 0:
        parser.error("--requests must be at least 1, --warmup and --rate at least 0")
    return args


def _choices(allowed):
    def parse(value: str) -> list[str]:
        names = [v for v in value.split(",") if v]
        unknown = sorted(set(names) - set(allowed))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (got {value!r})")
        return names

    return parse


def dump_totals(text: str) -> int:
    """The instructions (Ir) a callgrind dump counted: its `summary:` (or `totals:`) line."""
    for label in ("summary", "totals"):
        match = re.search(rf"^{label}:\s+(\d+)", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    raise ValueError("no summary or totals line in the callgrind dump")


def fake_upstream_module(tree: Path) -> str:
    """The fake upstream's module in that tree (it moved to its own package in the re-cut)."""
    return "fakeupstream" if (tree / "fakeupstream").is_dir() else "ai.fake_upstream"


class Client:
    """Sequential requests on one keep-alive connection (as wrk does), bodies read to the end."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.key = key

    def send(self, model: str, mode: str) -> None:
        body = json.dumps({**BODY, "model": model, **MODES[mode]})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        self.conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200 or (mode == "sse" and b"[DONE]" not in data):
            raise RuntimeError(f"{model} {mode}: {response.status} {data[:300]!r}")


def send_paced(client: Client, model: str, mode: str, count: int, rate: float) -> int:
    """Send ``count`` requests, the i-th at ``i / rate`` seconds; how many went out late.

    Some of the gateway's work runs on timers, not per request: the usage rows go to
    the database every GATEWAY_USAGE_FLUSH_INTERVAL (0.2 s), caches are checked once a
    second. Sent as fast as they come back, the requests' pace follows the machine's
    load, and so does the number of rows a flush carries (measured: 2.2 against 2.5 M
    instructions a JSON request, the same tree twice, 300 requests in 6 s against 22 s).
    At a fixed pace every run does the same timed work a request, as long as the
    gateway keeps up: a request that could not start on time is counted late.
    """
    began, late = time.monotonic(), 0
    for i in range(count):
        if rate:
            wait = began + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.5 / rate:
                late += 1
        client.send(model, mode)
    return late


def wait_for(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f} s")


class Callgrind:
    """The gateway's process under callgrind, driven with callgrind_control."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out, self.dumps = pid, out, 0

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def dump(self) -> dict[int, int]:
        """Write the counters since the last zero or dump: instructions by thread (1: main)."""
        self.control("--dump")
        self.dumps += 1
        # callgrind_control returns once the dump is written: one file a thread.
        paths = sorted(self.out.parent.glob(f"{self.out.name}.{self.dumps}-*"))
        if not paths:
            raise RuntimeError(f"callgrind wrote no {self.out}.{self.dumps}-*")
        return {int(p.name.rsplit("-", 1)[1]): dump_totals(p.read_text()) for p in paths}


def environment(work: Path, redis_url: str, log_level: str = "WARNING") -> dict:
    """run.py's environment, with str hashing fixed (the same instructions run to run)."""
    return {**bench_environment(work, redis_url, log_level), "PYTHONHASHSEED": "0"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tree = args.tree.resolve()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install valgrind).")
    if args.redis:
        import redis

        redis.Redis.from_url(args.redis).flushdb()
    work = Path(tempfile.mkdtemp(prefix="sb-instr-"))
    env = environment(work, args.redis, args.log_level)
    if args.untimed:
        # Written every 0.2 s (usage) and 1 s (instance activity), their cost a request
        # follows the machine's pace; once an hour, none falls in the measured requests.
        env |= {"GATEWAY_USAGE_FLUSH_INTERVAL": "3600", "INSTANCE_ACTIVITY_INTERVAL": "3600"}
    py = sys.executable
    fake_port, gw_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        key = migrate_and_seed(env, fake_port, tree)
        fake = [py, "-m", fake_upstream_module(tree), "--port", str(fake_port)]
        procs.append(
            subprocess.Popen(
                fake,
                cwd=tree,
                env=env,
                stdout=(work / "fake.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        out = work / "callgrind.out"
        gateway = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            py,
            "-m",
            "uvicorn",
            # As production and run.py serve it: panel.http's protocol, the lifespan (which
            # settles the heap), no access log.
            *uvicorn_args(host="127.0.0.1", port=gw_port),
            "--log-level",
            args.log_level.lower(),
        ]
        log = (work / "gateway.log").open("w")
        procs.append(
            subprocess.Popen(gateway, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        started = time.monotonic()
        wait_for(gw_port, timeout=600)
        commit = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True
        ).stdout.strip()
        timed = "left out (--untimed)" if args.untimed else "included"
        print(f"tree: {tree} ({commit}), LOG_LEVEL={args.log_level}, timed work {timed}")
        print(
            f"gateway under callgrind up in {time.monotonic() - started:.0f} s; "
            f"{args.warmup} warm-up and {args.requests} measured requests a cell, one at a time"
        )
        grind = Callgrind(procs[1].pid, out)
        client = Client(gw_port, key)
        targets = ["gateway", "limited"] if args.redis else ["gateway"]
        cells = [(t, m) for t in targets for m in args.modes]
        for target, mode in cells:
            for _ in range(args.warmup):
                client.send(TARGETS[target], mode)
        grind.control("--instr=on")
        pace = f"{args.rate:g}/s" if args.rate else "unpaced"
        print(
            f"Ir/request: instructions a request; loop: the event loop's thread (the request "
            f"path); others: every other thread (Django's sync thread: usage writes, reloads); "
            f"pace {pace}"
        )
        print(
            f"{'target':8} {'mode':5} {'requests':>8} {'loop':>12} {'others':>12} {'all':>12} "
            f"{'threads':>7} {'wall s':>7} {'late':>5}"
        )
        for target, mode in cells:
            client.send(TARGETS[target], mode)  # the first after the switch: not counted
            grind.control("--zero")
            began = time.monotonic()
            late = send_paced(client, TARGETS[target], mode, args.requests, args.rate)
            threads = grind.dump()
            loop, everything = threads[1], sum(threads.values())
            print(
                f"{target:8} {mode:5} {args.requests:>8} {loop / args.requests:>12,.0f} "
                f"{(everything - loop) / args.requests:>12,.0f} {everything / args.requests:>12,.0f} "
                f"{len(threads):>7} {time.monotonic() - began:>7.0f} {late:>5}",
                flush=True,
            )
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in work.glob("callgrind.out.*"):
                shutil.copy(path, args.keep / path.name)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
