"""`make bench-scheduling` (and the end of `make bench`): three models on a node allowed
two at once, a mixed workload, without and with the anti-thrash rule (issue 14).

Runs the real instance agent on a throw-away embedded database with three on-demand
instances of the command backend (the fake upstream after a simulated model load of
``--load`` seconds), INSTANCE_MAX_RUNNING=2. This script plays the gateway: clients
send sessions of requests to a model chosen by weight, each request a demand to the
agent (POST /instances/{name}/demand) then a chat completion to the port it gives,
and a writer records activity (last_request_at) as web processes do. Printed per
run: starts and evictions (from the agent's log), p50/p95 latency of demand +
request, demands refused (503) and requests lost (a demand said running, the
request then failed: goal 0). Numbers are printed, never checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median, quantiles

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, wait_until_serving  # noqa: E402

KEY = "bench-agent-key"
MODELS = {"m1": 0.5, "m2": 0.3, "m3": 0.2}  # the share of sessions each model gets
ACTIVITY_INTERVAL = 0.5
BODY = {"model": "m", "messages": [{"role": "user", "content": "Say something nice"}]}


def environment(work: Path, agent_url: str, residency: float) -> dict:
    return {
        **os.environ,
        "DATA_DIR": str(work),
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "DEBUG": "false",
        "SECRET_KEY": "bench",
        "FIELD_ENCRYPTION_KEY": "2yy8YpVhS1u0c8yJqmPZ7Yw0RqUq7Vq3Ck4o8mP3m8k=",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "INSTANCE_AGENT_URL": agent_url,
        "INSTANCE_AGENT_KEY": KEY,
        "INSTANCE_LOG_DIR": str(work / "instances"),
        "INSTANCE_PORT_RANGE": "24000-24099",
        "INSTANCE_POLL_INTERVAL": "0.1",
        "INSTANCE_STOP_GRACE": "2",
        "INSTANCE_MAX_RUNNING": "2",
        "INSTANCE_ACTIVITY_INTERVAL": str(ACTIVITY_INTERVAL),
        "INSTANCE_MIN_RESIDENCY": str(residency),
    }


class Gateway:
    """What web processes do around a request: count it in flight, write activity."""

    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids
        self.in_flight = dict.fromkeys(ids, 0)
        self.begun: set[str] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._write_activity, daemon=True)

    def begin(self, name: str) -> None:
        with self.lock:
            self.in_flight[name] += 1
            self.begun.add(name)

    def end(self, name: str) -> None:
        with self.lock:
            self.in_flight[name] -= 1

    def _write_activity(self) -> None:
        from django.db import connection
        from django.utils import timezone

        from ai.models import Instance

        while not self.done.wait(ACTIVITY_INTERVAL):
            with self.lock:
                used = {n for n, count in self.in_flight.items() if count} | self.begun
                self.begun = set()
            if used:
                ids = [self.ids[name] for name in used]
                Instance.objects.filter(pk__in=ids).update(last_request_at=timezone.now())
        connection.close()


async def client(
    number: int, http: httpx.AsyncClient, agent: str, gateway: Gateway, until: float, out: dict
) -> None:
    chance = random.Random(number)
    names, weights = list(MODELS), list(MODELS.values())
    while time.monotonic() < until:
        name = chance.choices(names, weights)[0]
        for _ in range(chance.randint(1, 4)):
            began = time.monotonic()
            gateway.begin(name)
            try:
                await one_request(http, agent, name, out)
            finally:
                gateway.end(name)
            out["latencies"].append(time.monotonic() - began)
        await asyncio.sleep(chance.uniform(0, 3))


async def one_request(http: httpx.AsyncClient, agent: str, name: str, out: dict) -> None:
    reply = await http.post(
        f"{agent}/instances/{name}/demand",
        json={"timeout": 30},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=40,
    )
    if reply.status_code != 200:
        out["refused"] += 1
        return
    port = reply.json()["port"]
    try:
        answer = await http.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={**BODY, "model": name},
            headers={"X-Fake-Latency-Ms": "100"},
            timeout=30,
        )
        if answer.status_code != 200:
            out["lost"] += 1
    except httpx.HTTPError:
        out["lost"] += 1


def seed(load: float) -> dict[str, int]:
    from ai.models import Instance

    command = f"sh -c 'sleep {load}; exec {{python}} -m fakeupstream --port {{port}}'"
    Instance.objects.all().delete()
    return {
        name: Instance.objects.create(
            name=name, backend="command", command_override=command, on_demand_start=True
        ).pk
        for name in MODELS
    }


def run(residency: float, args: argparse.Namespace) -> dict:
    """One run, in this process (started by ``main`` for each setting)."""
    work = Path(tempfile.mkdtemp(prefix="sb-bench-scheduling-"))
    agent_url = f"http://127.0.0.1:{free_port()}"
    env = environment(work, agent_url, residency)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", verbosity=0)
    ids = seed(args.load)
    log = work / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "manage.py", "instance_agent"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    out = {"latencies": [], "refused": 0, "lost": 0}
    try:
        wait_until_serving(f"{agent_url}/health", timeout=60)
        gateway = Gateway(ids)
        gateway.thread.start()
        asyncio.run(workload(agent_url, gateway, args, out))
        gateway.done.set()
        gateway.thread.join()
    finally:
        agent.terminate()
        agent.wait(timeout=60)
        connections.close_all()
    text = log.read_text()
    shutil.rmtree(work, ignore_errors=True)
    return {
        **out,
        "starts": text.count("Started instance"),
        "evictions": text.count(": evicted to start"),
    }


async def workload(agent: str, gateway: Gateway, args: argparse.Namespace, out: dict) -> None:
    until = time.monotonic() + args.seconds
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as http:
        await asyncio.gather(
            *(client(n, http, agent, gateway, until, out) for n in range(args.clients))
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=40, help="workload length per run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--load", type=float, default=1.0, help="simulated model load, s")
    parser.add_argument("--residency", type=float, default=30.0, help="INSTANCE_MIN_RESIDENCY")
    parser.add_argument("--one-run", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run is not None:
        print(json.dumps(run(args.one_run, args)))
        return
    shares = ", ".join(f"{name} {share:.0%}" for name, share in MODELS.items())
    print(
        f"scheduling: 3 on-demand models ({shares}) on a node allowed 2; {args.clients} "
        f"clients, {args.seconds:g} s a run, sessions of 1-4 requests (100 ms each) 0-3 s "
        f"apart; a start loads for {args.load:g} s; busy window "
        f"{2 * ACTIVITY_INTERVAL + 1.5:g} s"
    )
    print(
        f"{'anti-thrash':24} {'starts':>6} {'evictions':>9} {'requests':>8} {'p50 s':>6} "
        f"{'p95 s':>6} {'refused':>7} {'lost':>4}"
    )
    settings = (
        ("off (residency 0)", 0.0),
        (f"on (residency {args.residency:g} s)", args.residency),
    )
    for label, residency in settings:
        argv = [sys.executable, __file__, "--one-run", str(residency)]
        argv += ["--seconds", str(args.seconds), "--clients", str(args.clients)]
        argv += ["--load", str(args.load)]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        latencies = sorted(r["latencies"])
        p95 = quantiles(latencies, n=20)[-1] if len(latencies) > 1 else float("nan")
        print(
            f"{label:24} {r['starts']:>6} {r['evictions']:>9} {len(latencies):>8} "
            f"{median(latencies):>6.2f} {p95:>6.2f} {r['refused']:>7} {r['lost']:>4}",
            flush=True,
        )


if __name__ == "__main__":
    main()
