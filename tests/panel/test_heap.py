"""The server's startup heap is frozen out of the garbage collector's way (issue 20).

Under load the collector took 15 % of the gateway's CPU, most of it full collections
walking the ~180,000 objects startup made; uvicorn's lifespan now collects, freezes them
(``gc.freeze``) and collects the youngest generation less often. Run in a process of its
own: a frozen heap is never collected, which this test process must not inherit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STARTUP = """
import asyncio, gc, json, weakref
from panel import asgi

class Node:
    pass

gc.disable()  # only the lifespan's own collection may free the cycle below
node = Node()
node.me = node
gone = weakref.ref(node)
del node
before = gc.get_freeze_count()

async def start():
    sent, started = [], asyncio.Event()
    messages = [{"type": "lifespan.startup"}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)
        started.set()

    task = asyncio.create_task(asgi.lifespan_app({"type": "lifespan"}, receive, send))
    await started.wait()
    task.cancel()
    return sent

sent = asyncio.run(start())
print(json.dumps({
    "sent": sent,
    "before": before,
    "frozen": gc.get_freeze_count(),
    "threshold": gc.get_threshold(),
    "expected": asgi.GC_THRESHOLDS,
    "cycle_freed": gone() is None,
}))
"""


def test_lifespan_startup_collects_then_freezes_the_heap_and_collects_less_often(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path), "REDIS_URL": "", "LOG_LEVEL": "WARNING"}
    env.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    done = subprocess.run(
        [sys.executable, "-c", STARTUP], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["sent"] == [{"type": "lifespan.startup.complete"}]
    assert seen["before"] == 0
    assert seen["frozen"] > 10_000  # Django and the apps, loaded by the import
    assert seen["threshold"] == seen["expected"] != [700, 10, 10]
    # Collected before freezing: garbage already unreachable is not kept for ever.
    assert seen["cycle_freed"]
