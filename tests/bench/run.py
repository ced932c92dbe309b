"""`make bench`: the gateway against the fake upstream, measured with wrk.

Starts the fake upstream and the gateway (one worker) on loopback with a
throw-away embedded database (or PostgreSQL/Redis when DATABASE_URL/REDIS_URL
are set), seeds a model, a link with limits and a key, then runs wrk for JSON
and SSE (20 chunks) at concurrency 1, 16 and 64, direct and through the
gateway, and prints requests/s with p50/p99 latency. Issue 20: a minimal relay
(`relay.py`, no framework) runs in the same rounds, and the gateway's numbers are
printed as a share of its; `--rss-requests N` prints the gateway's RSS before and
after N more requests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from panel.http import uvicorn_args  # noqa: E402
from tests.servers import free_port, wait_until_serving  # noqa: E402

BODY = {"model": "bench-chat", "messages": [{"role": "user", "content": "Say something nice"}]}
SEED = """
import django, json, sys
django.setup()
from decimal import Decimal
from accounts.models import User
from accounts.services import apikey_create
from ai.models import AIModel, ModelLink, Upstream
from orgs.services import wallet_for, wallet_topup
user, _ = User.objects.get_or_create(username="bench")
for name, limited in (("bench-chat", False), ("bench-limited", True)):
    model, _ = AIModel.objects.get_or_create(name=name, defaults={
        "config": {"max_output_tokens": 512},
        "input_price_per_million": Decimal("1"), "output_price_per_million": Decimal("2")})
    Upstream.objects.get_or_create(model=model, name="fake", defaults={"base_url": sys.argv[1], "provider_model_id": "fake-chat"})
    limits = {"requests_per_minute": 10**8, "tokens_per_minute": 10**9,
        "requests_per_day": 10**9, "tokens_per_day": 10**12, "tokens_per_month": 10**12,
        "cost_per_month": Decimal("1000000"), "is_wallet_billed": True} if limited else {}
    ModelLink.objects.get_or_create(model=model, user=user, defaults={"is_default": not limited, **limits})
wallet_topup(wallet=wallet_for(user=user), amount=Decimal("1000000"), reason="bench")
print(apikey_create(user=user, name="bench")[1])
"""


RELAY_KEY = "sk-bench-relay"


def environment(work: Path, redis_url: str, log_level: str = "WARNING") -> dict[str, str]:
    """The gateway's environment in a bench: a throw-away embedded database in ``work``."""
    return {
        **os.environ,
        "DATA_DIR": str(work),
        "DEBUG": "false",
        "SECRET_KEY": "bench",
        "FIELD_ENCRYPTION_KEY": "2yy8YpVhS1u0c8yJqmPZ7Yw0RqUq7Vq3Ck4o8mP3m8k=",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": log_level,
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": "sb-bench",
    }


def migrate_and_seed(env: dict[str, str], fake_port: int, tree: Path = ROOT) -> str:
    """Migrate the bench's database and seed it (SEED) with ``tree``'s code; the bench key."""
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "-v0"], cwd=tree, env=env, check=True)
    return subprocess.run(
        [py, "-c", SEED, f"http://127.0.0.1:{fake_port}/v1"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def lua(path: Path, body: dict, key: str | None) -> Path:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def rss_mib(pid: int) -> float:
    """A process's resident set size now, in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_times(pid: int) -> tuple[float, float]:
    """The user and the system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def redis_cpu_seconds(url: str) -> float:
    if not url:
        return 0.0
    import redis

    info = redis.Redis.from_url(url).info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def wrk(
    url: str, script: Path, concurrency: int, seconds: int, server_pid: int, redis_url: str
) -> dict:
    """One wrk run; also the CPU the server measured (the gateway or the relay) and Redis
    spent per request meanwhile."""
    threads = 1 if concurrency == 1 else 2
    (user, system), redis_cpu = cpu_times(server_pid), redis_cpu_seconds(redis_url)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, OTHER_CORES),
    ).stdout
    user_after, system_after = cpu_times(server_pid)
    user, system = user_after - user, system_after - system
    redis_cpu = redis_cpu_seconds(redis_url) - redis_cpu
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": rps,
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "cpu_us": 1e6 * (user + system) / max(requests, 1),
        # Of it, the kernel's (system calls, and loopback TCP done on the sender's behalf).
        "sys_us": 1e6 * system / max(requests, 1),
        "redis_us": 1e6 * redis_cpu / max(requests, 1),
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


# With two or more cores the gateway gets the last one to itself; wrk and the fake
# upstream share the rest. Without that, the scheduler moves them around and the
# same run varies by +-20 %. Redis is a system service and is left where it is.
CORES = sorted(os.sched_getaffinity(0))
GATEWAY_CORES = {CORES[-1]} if len(CORES) > 1 else set(CORES)
OTHER_CORES = set(CORES[:-1]) or set(CORES)


def start(args: list[str], env: dict, log: Path, cores: set[int]) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )


MODES = {"json": {}, "sse": {"stream": True}}
# The seeded models: a link without limits, and one with every limit and a wallet.
TARGETS = {"gateway": "bench-chat", "limited": "bench-limited"}


def summarise(direct: dict, runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Print one cell's medians (and limited against gateway, round by round); return them."""
    med = {name: {k: median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    g, lim, relay = med["gateway"], med["limited"], med["relay"]
    changes = [
        100 * (b["rps"] / a["rps"] - 1)
        for a, b in zip(runs["gateway"], runs["limited"], strict=True)
    ]
    pad = f"{'':5} {'':>3}"
    print(
        f"{pad} {'median':8} gateway {g['rps']:.0f} req/s, p50 {g['p50']:.2f} ms "
        f"(added {g['p50'] - direct['p50']:.2f} ms), {g['cpu_us']:.0f} us cpu/req "
        f"({g['sys_us']:.0f} system)"
    )
    print(
        f"{pad} {'median':8} limited {lim['rps']:.0f} req/s, p50 "
        f"{lim['p50']:.2f} ms, {lim['cpu_us']:.0f} us cpu/req ({lim['sys_us']:.0f} system; "
        f"+{lim['redis_us']:.0f} Redis)"
    )
    print(
        f"{pad} {'median':8} relay {relay['rps']:.0f} req/s, p50 {relay['p50']:.2f} ms "
        f"(added {relay['p50'] - direct['p50']:.2f} ms), {relay['cpu_us']:.0f} us cpu/req "
        f"({relay['sys_us']:.0f} system)"
    )
    print(
        f"{pad} {'limits':8} {100 * (lim['rps'] / g['rps'] - 1):+.1f}% req/s "
        f"(rounds: {', '.join(f'{c:+.0f}%' for c in changes)}), "
        f"{lim['cpu_us'] - g['cpu_us']:+.0f} us cpu/req",
        flush=True,
    )
    return med


def print_against_relay(cells: list[tuple[str, int, dict]], with_limited: bool) -> None:
    """Issue 20's table: the gateway (and, with Redis, limited) as a share of the relay."""
    print("\nagainst the relay (medians; issue 20's goal: gateway/relay >= 0.5 at c=64 with")
    print("every feature on, added p50 at c=1 <= 0.4 ms, gateway cpu <= 350 us/req)")
    columns = ["mode", "c", "gateway/relay"]
    columns += ["limited/relay"] if with_limited else []
    columns += ["p50 over relay ms", "gateway cpu us/req"]
    columns += ["limited cpu us/req"] if with_limited else []
    columns += ["relay cpu us/req"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for mode, concurrency, med in cells:
        g, lim, relay = med["gateway"], med["limited"], med["relay"]
        row = [mode.upper(), str(concurrency), f"{g['rps'] / relay['rps']:.3f}"]
        row += [f"{lim['rps'] / relay['rps']:.3f}"] if with_limited else []
        # The added latency is issue 20's measure at c=1 only; above it, queueing dominates.
        row += [f"{g['p50'] - relay['p50']:.2f}" if concurrency == 1 else ""]
        row += [f"{g['cpu_us']:.0f}"]
        row += [f"{lim['cpu_us']:.0f}"] if with_limited else []
        row += [f"{relay['cpu_us']:.0f}"]
        print("| " + " | ".join(row) + " |", flush=True)


def send_many(target: tuple, modes: list[str], count: int, work: Path, pid: int) -> int:
    """Send at least ``count`` requests to ``target`` at c=16; return how many were answered.

    wrk cannot stop after N requests (its main thread sleeps the whole duration), so it
    runs 5 s at a time, the modes taking turns, until ``count`` are answered.
    """
    url, auth, model = target
    sent, turn = 0, 0
    while sent < count:
        mode, turn = modes[turn % len(modes)], turn + 1
        script = lua(work / f"rss-{mode}.lua", {**BODY, "model": model, **MODES[mode]}, auth)
        sent += wrk(url, script, 16, 5, pid, "")["requests"]
    return sent


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _at_least_zero(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return number


def _concurrencies(value: str) -> list[int]:
    try:
        return [_positive(c) for c in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of numbers") from None


def _modes(value: str) -> list[str]:
    modes = value.split(",")
    if not set(modes) <= {"json", "sse"}:
        raise argparse.ArgumentTypeError(f"{value!r}: modes are json and sse")
    return modes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=_positive, default=2)
    parser.add_argument(
        "--rounds", type=_positive, default=5, help="gateway/limited/relay alternations"
    )
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    parser.add_argument("--concurrency", type=_concurrencies, default=[1, 16, 64])
    parser.add_argument("--modes", type=_modes, default=["json", "sse"])
    parser.add_argument(
        "--redis", default=os.environ.get("REDIS_URL", ""), help="keep limits in this Redis"
    )
    parser.add_argument(
        "--rss-requests",
        type=_at_least_zero,
        default=0,
        help="print the gateway's RSS before and after this many more requests (0: skip)",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk); `make bench` installs it.")
    work = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    env = environment(work, args.redis)
    py = sys.executable
    fake_port, gw_port = free_port(), free_port()
    procs = []
    try:
        key = migrate_and_seed(env, fake_port)
        procs.append(
            start(
                [py, "-m", "fakeupstream", "--port", str(fake_port)],
                env,
                work / "fake.log",
                OTHER_CORES,
            )
        )
        server = {
            # As production runs it (docker/Dockerfile, `make run`): panel.http's protocol
            # with the read timeouts, lifespan on, no access log.
            "uvicorn": [
                py,
                "-m",
                "uvicorn",
                *uvicorn_args(host="127.0.0.1", port=gw_port),
                "--log-level",
                "warning",
            ],
            "daphne": [py, "-m", "daphne", "-p", str(gw_port), "panel.asgi:application"],
        }[args.server]
        procs.append(start(server, env, work / "gateway.log", GATEWAY_CORES))
        relay_port = free_port()
        relay = [py, "tests/bench/relay.py", "--port", str(relay_port)]
        relay += ["--upstream", f"http://127.0.0.1:{fake_port}/v1", "--key", RELAY_KEY]
        procs.append(start(relay, env, work / "relay.log", GATEWAY_CORES))
        wait_until_serving(f"http://127.0.0.1:{fake_port}/_fake/health")
        wait_until_serving(f"http://127.0.0.1:{gw_port}/v1/models")
        wait_until_serving(f"http://127.0.0.1:{relay_port}/v1/chat/completions")
        fake_pid, gateway_pid, relay_pid = (proc.pid for proc in procs)
        rss_at_start = rss_mib(gateway_pid)
        gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        targets = {
            "direct": (f"http://127.0.0.1:{fake_port}/v1/chat/completions", None, "fake-chat"),
            "gateway": (gateway, key, "bench-chat"),
            "limited": (gateway, key, "bench-limited"),
            "relay": (f"http://127.0.0.1:{relay_port}/v1/chat/completions", RELAY_KEY, "fake-chat"),
        }
        pids = {"direct": fake_pid, "gateway": gateway_pid, "limited": gateway_pid}
        pids["relay"] = relay_pid
        kept_in = f"Redis ({args.redis})" if args.redis else "the database (no Redis)"
        print(
            f"server: {args.server} (1 worker) and the relay on core(s) {sorted(GATEWAY_CORES)}, "
            f"wrk and the fake upstream on {sorted(OTHER_CORES)}; wrk {args.seconds}s a run"
        )
        print(f"gateway: a link without limits; limited: every limit and a wallet, in {kept_in}")
        print("relay: tests/bench/relay.py, aiohttp.web on uvloop, no framework (issue 20)")
        print(
            f"gateway, limited and relay alternate for {args.rounds} rounds; summaries are "
            "medians. cpu us/req: the serving process's CPU per request (direct: the fake "
            "upstream's; redis: Redis server's)"
        )
        print(
            f"{'mode':5} {'c':>3} {'target':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'non-2xx':>8} {'cpu us/req':>11} {'redis':>6}"
        )

        def run(name: str, mode: str, concurrency: int, warm: bool) -> dict:
            url, auth, model = targets[name]
            script = lua(work / f"{name}-{mode}.lua", {**BODY, "model": model, **MODES[mode]}, auth)
            if warm:
                wrk(url, script, concurrency, 1, pids[name], "")  # warm up pools and caches
            r = wrk(url, script, concurrency, args.seconds, pids[name], args.redis)
            print(
                f"{mode:5} {concurrency:>3} {name:8} {r['rps']:>9.0f} {r['p50']:>8.2f} "
                f"{r['p99']:>8.2f} {r['errors']:>8} {r['cpu_us']:>11.0f} {r['redis_us']:>6.0f}",
                flush=True,
            )
            return r

        cells = []
        for mode in args.modes:
            for concurrency in args.concurrency:
                direct = run("direct", mode, concurrency, warm=True)
                runs = {"gateway": [], "limited": [], "relay": []}
                for round_ in range(args.rounds):
                    for name in runs:
                        runs[name].append(run(name, mode, concurrency, warm=round_ == 0))
                summary = summarise(direct, runs)
                cells.append((mode, concurrency, summary))
        print_against_relay(cells, with_limited=bool(args.redis))
        if args.rss_requests:
            rss_before = rss_mib(gateway_pid)
            name = "limited" if args.redis else "gateway"
            sent = send_many(targets[name], args.modes, args.rss_requests, work, gateway_pid)
            print(
                f"gateway RSS: {rss_at_start:.1f} MiB at start, {rss_before:.1f} MiB after the "
                f"measured runs, {rss_mib(gateway_pid):.1f} MiB after {sent} more requests "
                f"to {name} ({', '.join(args.modes)} in turns of 5 s, c=16)",
                flush=True,
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
