"""`make soak`: the production topology under mixed traffic and faults, then its invariants.

Creates a scratch PostgreSQL database (``soak_<random>``, dropped at the end) reached
through a TCP proxy that can cut it, a redis-server of its own (which it restarts),
the fake upstream, and `manage.py serve_prod` (web processes, Celery workers, beat,
the instance agent) on them. Mixed traffic runs for SOAK_SECONDS (JSON, streams,
streams aborted mid-way, a wallet-billed link, limited links, failing upstreams)
while, each in its own recorded window, one web process is SIGKILLed, Redis is
restarted and PostgreSQL is cut for a few seconds. Once the topology is quiet it
checks and prints: every admitted request has exactly one UsageEvent (a killed
process's are written ``lost`` by the reconciler), wallets equal their ledgers,
nothing stays held, the limited links never went past their limits by more than one
reservation, rollups equal the raw events, no 5xx outside the fault windows, and the
memory of each web and worker process. Exits 1 when an invariant fails.

    python tests/soak/run.py [--seconds 300] [--web 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.servers import (  # noqa: E402
    LOCAL_POSTGRES,
    RedisServer,
    ScratchDatabase,
    TcpProxy,
    free_port,
    wait_until_serving,
)
from tests.soak.topology import MemorySampler, ServeProd  # noqa: E402
from tests.soak.traffic import Outcome, Traffic  # noqa: E402

FIELD_ENCRYPTION_KEY = "2yy8YpVhS1u0c8yJqmPZ7Yw0RqUq7Vq3Ck4o8mP3m8k="
# A process whose heartbeat (every 5 s) is older than this is dead: its journal is
# reconciled by beat's task, which runs this often.
PROCESS_TIMEOUT, RECONCILE_INTERVAL = 12, 3
# How long after a fault ends its effects may still show (reconnects, cold caches).
GRACE = 5.0
DATABASE_CUT_SECONDS = 5.0
# Memory is compared from this long after the traffic (or a process) started.
WARM_UP = 10.0
# The broken model's only upstream always fails: its 502 (or 503 once its breaker is
# open) is the answer, not a fault of the gateway.
DESIGNED_FAILURES = {"broken": {502, 503}}


@dataclass
class Window:
    """When a fault was acting, its effects included."""

    name: str
    start: float
    end: float = float("inf")
    note: str = ""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    """What the soak saw and whether its invariants held."""

    checks: list[Check] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # program/pid: first, last KiB
    faults: list[str] = field(default_factory=list)  # the fault windows, in order

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))
        self.say(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")


def postgres_admin_url() -> str:
    """The `postgres` database of DATABASE_URL's server when it names PostgreSQL, else local."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = LOCAL_POSTGRES
    return urlsplit(url)._replace(path="/postgres").geturl()


def environment(work: Path, database_url: str, redis_url: str) -> dict:
    return {
        **os.environ,
        "DATA_DIR": str(work / "data"),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(32),
        "FIELD_ENCRYPTION_KEY": FIELD_ENCRYPTION_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": "",
        "GATEWAY_PROCESS_TIMEOUT": str(PROCESS_TIMEOUT),
        "USAGE_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
        "USAGE_ROLLUP_INTERVAL": "10",
        "INSTANCE_AGENT_URL": f"http://127.0.0.1:{free_port()}",
        "PYTHONUNBUFFERED": "1",
    }


def django_run(env: dict, *args: str) -> dict:
    """``python -m tests.soak.world ARGS`` on ``env``'s database; its JSON."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.soak.world", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"tests.soak.world {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def soak(
    *,
    seconds: float,
    web: int,
    workers: int,
    concurrency: int = 12,
    redis_keeps_data: bool = True,
) -> Report:
    """Run the soak; the report says what held (the caller decides what to do on failure).

    ``redis_keeps_data=False`` restarts Redis empty, as one without persistence (or one
    that crashed between snapshots) comes back: counters, leases and journals gone.
    """
    report = Report()
    # One line per request would bury the report.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="sb-soak-"))
    cleanup: list = []  # what to stop, last started first
    try:
        servers = _start_servers(work, cleanup, redis_keeps_data=redis_keeps_data)
        _soak_on(
            servers,
            report,
            cleanup,
            seconds=seconds,
            web=web,
            workers=workers,
            concurrency=concurrency,
        )
    except Exception as exc:
        report.check("the soak ran to its end", False, f"{type(exc).__name__}: {exc}")
        log = work / "topology.log"
        if log.exists():
            print(log.read_text()[-4000:], file=sys.stderr)
    finally:
        for undo in reversed(cleanup):
            try:
                undo()
            except Exception as exc:  # the rest must still be cleaned up
                print(f"cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return report


@dataclass
class Servers:
    """What the topology runs on: the database behind its proxy, Redis, the fake upstream."""

    work: Path
    database: ScratchDatabase
    proxy: TcpProxy
    redis: RedisServer
    env: dict  # the topology's environment: the database through the proxy
    direct: dict  # the same, the database reached directly (seeding, checks)
    fake_url: str
    redis_keeps_data: bool


def _start_servers(work: Path, cleanup: list, *, redis_keeps_data: bool) -> Servers:
    (work / "data").mkdir()
    (work / "redis").mkdir()
    database = ScratchDatabase(postgres_admin_url(), f"soak_{secrets.token_hex(4)}")
    database.__enter__()
    cleanup.append(lambda: database.__exit__(None, None, None))
    target = urlsplit(database.url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    cleanup.append(proxy.stop)
    redis = RedisServer(data_dir=work / "redis" if redis_keeps_data else None).start()
    cleanup.append(redis.stop)
    through_proxy = target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}")
    env = environment(work, through_proxy.geturl(), redis.url)
    fake_port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "fakeupstream", "--port", str(fake_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    cleanup.append(lambda: (fake.terminate(), fake.wait(timeout=10)))
    wait_until_serving(f"http://127.0.0.1:{fake_port}/_fake/health")
    direct = {**env, "DATABASE_URL": database.url}
    return Servers(
        work, database, proxy, redis, env, direct, f"http://127.0.0.1:{fake_port}", redis_keeps_data
    )


def _soak_on(
    servers: Servers, report: Report, cleanup: list, *, seconds, web, workers, concurrency
) -> None:
    """Start serve_prod, seed, drive traffic and faults, settle, judge, stop."""
    began = time.monotonic()
    # Directly, not through the proxy: a fresh database's migrations are many round trips
    # (serve_prod's own migrate then finds nothing to do).
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=servers.direct, check=True
    )
    log = servers.work / "topology.log"
    topology = ServeProd(servers.env, web=web, workers=workers, log=log).start()
    cleanup.append(topology.stop)
    _wait_for_topology(topology, web, workers)
    world = django_run(servers.direct, "seed", servers.fake_url)
    report.say(
        f"soak: {seconds:.0f} s of traffic ({concurrency} concurrent) on serve_prod "
        f"(up in {time.monotonic() - began:.1f} s): {web} web, {workers} workers, beat, "
        f"agent; PostgreSQL {servers.database.name} via a proxy, redis-server "
        f":{servers.redis.port} ({'keeps' if servers.redis_keeps_data else 'loses'} its data)"
    )
    sampler = MemorySampler(topology, interval=max(1.0, seconds / 60)).start()
    cleanup.append(sampler.stop)
    outcomes, windows, warm_at = asyncio.run(
        _drive(
            topology, servers.proxy, servers.redis, world, seconds=seconds, concurrency=concurrency
        )
    )
    sampler.stop()
    sampler.sample()
    _settle(servers.redis.url, report)
    state = django_run(servers.direct, "check", json.dumps(world["limited_links"]))
    _judge(report, outcomes, windows, state)
    _judge_memory(report, sampler, warm_at)
    stopping = time.monotonic()
    topology.stop()
    report.say(f"serve_prod stopped (SIGTERM) in {time.monotonic() - stopping:.1f} s")


def _wait_for_topology(topology, web: int, workers: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    wanted = {f"web-{i}" for i in range(web)} | {f"worker-{i}" for i in range(workers)}
    while not wanted <= set(topology.programs()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"programs not running: {sorted(wanted - set(topology.programs()))}")
        time.sleep(0.3)
    wait_until_serving(f"{topology.url}/healthz", timeout=timeout)


async def _drive(topology, proxy, redis, world, *, seconds: float, concurrency: int):
    """Traffic for ``seconds``; the three faults, one after another, in their windows."""
    traffic = Traffic(topology.url, world, concurrency=concurrency)
    running = asyncio.create_task(traffic.run(seconds))
    begin = time.monotonic()
    warm_at = begin + min(WARM_UP, seconds * 0.15)
    windows: list[Window] = []

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, begin + seconds * fraction - time.monotonic()))

    await at(0.2)
    windows.append(await asyncio.to_thread(_kill_one_web, topology))
    await at(0.45)
    windows.append(await asyncio.to_thread(_restart_redis, redis))
    await at(0.7)
    window = Window("PostgreSQL cut", time.monotonic())
    windows.append(window)
    proxy.cut()
    await asyncio.sleep(DATABASE_CUT_SECONDS)
    proxy.restore()
    window.end = time.monotonic() + GRACE
    window.note = f"cut {DATABASE_CUT_SECONDS:.0f} s"
    return await running, windows, warm_at


def _kill_one_web(topology) -> Window:
    name = topology.web_programs()[0]
    pid = topology.programs()[name]
    window = Window(f"SIGKILL {name}", time.monotonic())
    os.kill(pid, signal.SIGKILL)
    new_pid = topology.wait_restarted(name, pid)
    window.end = time.monotonic() + GRACE
    window.note = f"pid {pid} -> {new_pid} after {window.end - GRACE - window.start:.1f} s"
    return window


def _restart_redis(redis) -> Window:
    window = Window("Redis restart", time.monotonic())
    redis.restart()
    window.end = time.monotonic() + GRACE
    window.note = f"down {window.end - GRACE - window.start:.1f} s"
    return window


def _settle(redis_url: str, report: Report, timeout: float = 60.0) -> None:
    """Wait until flushes, lease returns and the reconciler of dead processes are done."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    began = time.monotonic()
    time.sleep(3.0)  # flushes (0.2 s) and lease returns (1 s)
    while time.monotonic() - began < timeout:
        journals = [key.decode() for key in client.scan_iter("sb:gw:inflight:*")]
        dead = [
            key
            for key in journals
            if not client.exists(key.replace("sb:gw:inflight:", "sb:gw:alive:"))
        ]
        if not dead:
            break
        time.sleep(1.0)
    report.say(f"settled in {time.monotonic() - began:.1f} s")


def _in_window(outcome: Outcome, windows: list[Window]) -> Window | None:
    for window in windows:
        if outcome.started < window.end and outcome.ended > window.start:
            return window
    return None


def _expects_event(status: int | None) -> bool | None:
    """Whether an answer of this status was admitted (True), refused (False), or unknown."""
    if status is None:
        return None
    if 200 <= status < 300 or status == 502:
        return True
    if 400 <= status < 500 or status == 503:
        return False
    return None


def _judge(report: Report, outcomes: list[Outcome], windows: list[Window], state: dict) -> None:
    events = state["events"]
    report.faults = [window.name for window in windows]
    report.say(f"requests: {len(outcomes)}; faults:")
    for window in windows:
        inside = [o for o in outcomes if _in_window(o, [window])]
        bad = Counter(
            f"{o.kind} {o.status if o.status is not None else 'no answer'}{' cut' if o.error else ''}"
            for o in inside
            if o.status is None or o.status >= 500 or o.error
        )
        report.say(f"  {window.name} ({window.note}): {len(inside)} requests; {dict(bad)}")
    report.say(f"{'kind':9} {'sent':>6}  statuses")
    for kind in sorted({o.kind for o in outcomes}):
        mine = [o for o in outcomes if o.kind == kind]
        statuses = Counter(str(o.status) for o in mine)
        report.say(f"{kind:9} {len(mine):>6}  {dict(sorted(statuses.items()))}")

    admitted = [o for o in outcomes if _expects_event(o.status)]
    missing = [o for o in admitted if o.request_id not in events]
    lost = [o for o in admitted if events.get(o.request_id, [0, ""])[1] == "lost"]
    report.check(
        "every admitted request (2xx, 502) has its UsageEvent",
        bool(admitted) and not missing,
        f"{len(admitted)} admitted, {len(missing)} without an event, {len(lost)} written "
        f"'lost' by the reconciler; {sum(c for c, _ in events.values())} events in all",
    )
    refused = [o for o in outcomes if _expects_event(o.status) is False]
    counted = [o for o in refused if o.request_id in events]
    report.check(
        "refused requests (4xx, 503) leave no UsageEvent",
        not counted,
        f"{len(refused)} refused, {len(counted)} with an event",
    )
    duplicated = {rid: count for rid, (count, _) in events.items() if count != 1}
    report.check("no request has two UsageEvents", not duplicated, f"{len(duplicated)} duplicated")
    answered = {o.request_id for o in outcomes if o.request_id}
    strays = [rid for rid in events if rid not in answered]
    unanswered = [o for o in outcomes if not o.request_id]
    report.check(
        "events of unanswered requests are no more than the requests left unanswered",
        len(strays) <= len(unanswered),
        f"{len(strays)} events of requests the client got no answer to; {len(unanswered)} unanswered",
    )
    for wallet in state["wallets"]:
        report.check(
            f"wallet {wallet['id']}'s balance equals the sum of its ledger",
            Decimal(wallet["balance"]) == Decimal(wallet["ledger"]),
            f"balance {wallet['balance']}, ledger {wallet['ledger']}",
        )
        report.check(
            f"wallet {wallet['id']} was never overspent",
            Decimal(wallet["lowest"]) >= 0,
            f"lowest balance replaying its ledger {wallet['lowest']}",
        )
    held = state["held"]
    holding = {k: v for k, v in held.get("redis_wallet_holds", {}).items() if v}
    report.check(
        "nothing is held or journalled once all settled",
        not holding
        and not held.get("redis_journal_entries")
        and not held["journal_rows"]
        and all(Decimal(w["held"]) == 0 for w in state["wallets"]),
        f"Redis holds {holding or 0}, Redis journal entries {held.get('redis_journal_entries', 0)}, "
        f"journal rows {held['journal_rows']}",
    )
    refusals = Counter((o.kind, o.status) for o in outcomes)
    met = {kind: refusals[kind, 429] for kind in state["limits"]}
    report.check(
        "the limited links met their limits (429) and the billed link its balance (402)",
        all(met.values()) and refusals["billed", 402] > 0,
        f"refused by a limit {met}, {refusals['billed', 402]} for want of credits",
    )
    for name, limits in state["limits"].items():
        _judge_limits(report, name, limits)
    rollups = state["rollups"]
    report.check(
        "hourly and daily rollups equal the raw events",
        rollups["hour"] == rollups["raw"] == rollups["day"],
        f"raw {rollups['raw']}; hourly {rollups['hour']}; daily {rollups['day']}",
    )
    outside = [o for o in outcomes if _in_window(o, windows) is None]
    failures = [
        o
        for o in outside
        if (o.status is None or o.status >= 500 or o.error)
        and o.status not in DESIGNED_FAILURES.get(o.kind, ())
    ]
    report.check(
        "no 5xx, cut stream or lost connection outside the fault windows",
        not failures,
        f"{len(outside)} requests outside; failures: "
        + (", ".join(f"{o.kind} {o.status} {o.error[:80]}" for o in failures[:5]) or "none"),
    )


def _judge_limits(report: Report, name: str, limits: dict) -> None:
    for metric in ("requests", "tokens"):
        per_minute = limits[metric]
        bound = limits[f"{metric}_bound"]
        if bound is None:
            continue
        worst = max(per_minute.values(), default=0)
        report.check(
            f"the {name} link's {metric} per minute stay within the limit plus one reservation",
            bool(per_minute) and worst <= bound,
            f"at most {worst} in a minute (bound {bound}); per minute {list(per_minute.values())}",
        )


def _judge_memory(report: Report, sampler: MemorySampler, warm_at: float) -> None:
    report.say("memory (RSS of each program's process tree, KiB): first after warm-up -> last")
    growths = []
    for (name, pid), samples in sorted(sampler.samples.items()):
        # A process started during the run (a restarted one) warms up from its own start.
        warm_from = max(warm_at, samples[0][0] + WARM_UP) if samples[0][0] > warm_at else warm_at
        warm = [rss for at, rss in samples if at >= warm_from]
        if len(warm) < 2:
            report.say(f"  {name} (pid {pid}): {len(warm)} sample(s) after warm-up")
            continue
        first, last = warm[0], warm[-1]
        report.rss[f"{name}/{pid}"] = (first, last)
        growths.append(last / first)
        report.say(f"  {name} (pid {pid}): {first} -> {last} ({100 * (last / first - 1):+.1f}%)")
    report.check(
        "no web or worker process doubled its memory",
        bool(growths) and max(growths) < 2.0,
        f"largest growth x{max(growths, default=0):.2f} over {len(growths)} processes",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 300)))
    parser.add_argument("--web", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument(
        "--redis-loses-data",
        action="store_true",
        help="restart Redis empty (no persistence): what its counters and journals then lose",
    )
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("the soak needs redis-server on PATH (apt-get install redis-server)")
    report = soak(
        seconds=args.seconds,
        web=args.web,
        workers=args.workers,
        concurrency=args.concurrency,
        redis_keeps_data=not args.redis_loses_data,
    )
    failed = [check.name for check in report.checks if not check.ok]
    print("soak: " + ("every invariant held" if report.ok else f"FAILED: {'; '.join(failed)}"))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
