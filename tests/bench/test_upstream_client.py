"""The upstream client bench (issue 20) runs both clients and prints a line a round."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_it_prints_the_cpu_a_call_of_both_clients():
    result = subprocess.run(
        [sys.executable, "tests/bench/upstream_client.py", "--calls", "30", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pattern = r"round \d: aiohttp [\d.]+ us/call, http1 [\d.]+ us/call \(-?[\d.]+ us less\)"
    assert len(lines) == 2 and all(re.fullmatch(pattern, line) for line in lines), lines
