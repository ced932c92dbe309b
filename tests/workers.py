"""Each pytest-xdist worker's own DATA_DIR and Redis database (`make test` loads this with -p).

The suite runs in two worker processes (pytest-xdist). pytest-django already gives each
its own test database; what else the suite shares goes apart here, before Django reads
its settings (a -p plugin is imported before pytest-django loads them):
- DATA_DIR, with what the embedded default keeps there: the filesystem Celery broker (a
  worker started by one process must not take the other's tasks), the beat schedule, the
  instance agents' node locks and logs, the generated development secrets;
- the Redis database: REDIS_URL's, when set, moves up by the worker's number, and
  `tests.servers.LOCAL_REDIS` (the Redis tests use when REDIS_URL is unset) does the same,
  so one worker's flush of the limit counters or its Celery queue is not the other's;
- the instance agents' port ranges (``port_range``): an agent takes the first port of its
  range that nobody listens on, and two workers' agents checking the same port at once
  both took it (one instance then failed to bind and was restarted).
Without xdist (a plain `pytest`), nothing changes.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
ISOLATED = "SWITCHBOARD_TESTS_ISOLATED_WORKER"  # which worker _isolate set apart


def worker_number() -> int:
    """0 for the first xdist worker and for a run without xdist, n for `gw<n>`."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


# How far apart the workers' ports for instances are: each worker's 21000-23999 (the
# agents' ranges, and runs of free ports a test picks) moves up by this much, staying below
# Linux's ephemeral ports (32768 up) for three workers.
PORT_SPACING = 4000


def worker_port(first: int) -> int:
    """``first`` moved up by PORT_SPACING for each worker after the first."""
    return first + PORT_SPACING * worker_number()


def port_range(first: int, size: int = 1000) -> str:
    """INSTANCE_PORT_RANGE's ``first-last`` for an agent of this worker, from ``first``."""
    start = worker_port(first)
    return f"{start}-{start + size - 1}"


def shifted_redis_url(url: str, by: int) -> str:
    """The same Redis server, its database number moved up by ``by`` (16 databases)."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    number = int(path) if path.isdigit() else 0
    return parts._replace(path=f"/{(number + by) % 16}").geturl()


def _isolate() -> None:
    from django.conf import settings

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # Imported once Django has read its settings (by tests.servers, without -p): too late.
    if not worker or settings.configured:
        return
    base = Path(os.environ.get("DATA_DIR") or ROOT / "data")
    data_dir = base / "test-workers" / worker
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DATA_DIR"] = str(data_dir)
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = shifted_redis_url(os.environ["REDIS_URL"], worker_number())
    os.environ[ISOLATED] = worker


def check_isolated() -> None:
    """Refuse an xdist worker that this plugin did not set apart (`pytest -n 2` without
    `-p tests.workers`): its tests would share Redis and DATA_DIR with the other's."""
    import pytest

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get(ISOLATED) != worker:
        raise pytest.UsageError(
            "the suite runs in several processes only with -p tests.workers "
            "(`make test`, or python -m pytest -p tests.workers -n 2)"
        )


_isolate()
