"""A stand-in trainer program: reads its job's config, prints the progress protocol.

``--mode`` picks the behaviour the runner's tests need:
  ok          progress and metrics for --steps steps (--sleep seconds each), an output
              directory with the config it read and the dataset's line count, a result
  crash       a traceback on stderr at step 0, exit 1
  error       an ``error`` line, then exit 3
  noresult    progress, then exit 0 without a result
  badresult   a result naming a path that is not there, exit 0
  sleep       starts a grandchild in its own group, says both pids, sleeps (--ignore-term:
              both ignore SIGTERM)
  junk        unreadable lines, bytes that are not UTF-8 and a 1 MB line, then ok
  env         a log line with what it sees of its environment, then ok
  chatty      --steps log lines and as many metrics lines, then ok
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def say(**line) -> None:
    print(json.dumps(line), flush=True)


def train(config: dict, steps: int, pause: float) -> None:
    output = Path(config["output_dir"])
    output.mkdir(parents=True, exist_ok=True)
    examples = Path(config["dataset_path"]).read_text().splitlines()
    say(event="log", message=f"loaded {len(examples)} examples")
    for step in range(1, steps + 1):
        time.sleep(pause)
        say(event="progress", step=step, total_steps=steps, epoch=step / steps, loss=2.0 / step)
    (output / "adapter_model.safetensors").write_bytes(b"\0" * 1234)
    seen = {**config, "examples": len(examples)}
    (output / "config-seen.json").write_text(json.dumps(seen))
    say(event="result", path=str(output), format="hf_lora")


def sleep_with_a_grandchild(ignore_term: bool) -> None:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code += "time.sleep(600)\n"
    grandchild = subprocess.Popen([sys.executable, "-c", code])
    say(event="log", message=f"pids {os.getpid()} {grandchild.pid}")
    time.sleep(600)


def junk() -> None:
    out = sys.stdout.buffer
    for line in (
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'{"event": 5}\n',
        b'{"event": "metrics", "step": 1, "loss": NaN, "acc": "high"}\n',
        b'{"event": "progress", "step": -4, "total_steps": "many"}\n',
        b'{"event": "result", "path": "", "format": "zip"}\n',
        b"\xff\xfe bytes that are not UTF-8\n",
        b"x" * 1_000_000 + b"\n",
        b"\n",
    ):
        out.write(line)
    out.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    if args.mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: boom at step 0", file=sys.stderr)
        return 1
    if args.mode == "error":
        say(event="error", message="CUDA out of memory")
        return 3
    if args.mode == "noresult":
        say(event="progress", step=1, total_steps=2)
        return 0
    if args.mode == "badresult":
        say(event="result", path="/nonexistent/adapter", format="hf")
        return 0
    if args.mode == "sleep":
        sleep_with_a_grandchild(args.ignore_term)
        return 0
    if args.mode == "junk":
        junk()
    if args.mode == "env":
        names = ("SECRET_KEY", "FIELD_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL")
        names += ("ADMIN_PASSWORD", "DJANGO_SETTINGS_MODULE", "PATH")
        seen = {name: name in os.environ for name in names}
        seen["TRAINER_FLAG"] = os.environ.get("TRAINER_FLAG")
        say(event="log", message="env " + json.dumps(seen, sort_keys=True))
    if args.mode == "chatty":
        for step in range(1, args.steps + 1):
            say(event="log", message=f"line {step}")
            say(event="metrics", step=step, loss=1.0 / step)
    train(config, args.steps, args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
