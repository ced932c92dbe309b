"""Celery's worker and beat as production runs them (docker/compose.yaml), on Redis."""

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

from tests.servers import redis_url_or_skip, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _heartbeats(db: Path) -> list:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT name FROM panel_heartbeat").fetchall()
    except sqlite3.OperationalError:
        return []


def test_a_worker_and_beat_on_redis_run_the_heartbeat_task(tmp_path):
    """Issue 11: kombu 5.7's Redis transport refused redis-py 5 and the worker died."""
    redis_url = redis_url_or_skip()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DATA_DIR=str(tmp_path),
        REDIS_URL=redis_url,
        CACHE_KEY_PREFIX=f"sb-celery-{uuid.uuid4().hex[:10]}",
        CELERY_HEARTBEAT_INTERVAL="1",
        PYTHONUNBUFFERED="1",
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    celery = [sys.executable, "-m", "celery", "-A", "panel"]
    log = open(tmp_path / "celery.log", "w+")  # noqa: SIM115 - read back on failure
    processes = [
        subprocess.Popen(
            [
                *celery,
                "worker",
                "-l",
                "info",
                "--concurrency",
                "1",
                "-n",
                f"test-{uuid.uuid4()}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [*celery, "beat", "-l", "info", "-s", str(tmp_path / "celerybeat-schedule")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
    ]
    try:

        def ran():
            for process in processes:
                assert process.poll() is None, Path(log.name).read_text()
            return _heartbeats(tmp_path / "switchboard.sqlite3")

        assert wait_for(ran, 90, "the worker to run beat's heartbeat task") == [("beat",)]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
