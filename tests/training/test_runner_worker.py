"""Training jobs on a real Celery worker of the ``training`` queue, as a GPU host runs one
(`celery -A panel worker -Q training`): the embedded default's file-system broker, or
Redis when REDIS_URL is set. The jobs are made and enqueued by `manage.py shell`, as a
web process would, and read back from the worker's SQLite file."""

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ai.instances import procs
from tests.servers import wait_for
from tests.training.runner_world import enqueue_code

ROOT = Path(__file__).resolve().parents[2]

# Each test migrates a database and starts workers: more than the suite's 120 s default.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def world(tmp_path):
    """A migrated data dir, and the environment of the processes that share it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "REDIS_URL"}
    }
    env.update(
        DATA_DIR=str(tmp_path),
        CACHE_KEY_PREFIX=f"sb-training-{uuid.uuid4().hex[:10]}",
        TRAINING_HEARTBEAT_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    _manage(env, "migrate", "--noinput")
    return env


def _manage(env, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _enqueue(env, mode: str, *args: str) -> int:
    return int(_manage(env, "shell", "-c", enqueue_code(mode, *args)).split()[-1])


def _row(env, table: str, job_id: int, columns: str):
    key = "id" if table == "ai_trainingjob" else "job_id"
    query = f"SELECT {columns} FROM {table} WHERE {key} = ?"
    with sqlite3.connect(Path(env["DATA_DIR"]) / "switchboard.sqlite3") as conn:
        return conn.execute(query, (job_id,)).fetchone()


class Worker:
    """`celery -A panel worker -Q training` in the test's data dir."""

    def __init__(self, env, tmp_path: Path, *pool: str) -> None:
        self.log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115 - read back on failure
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "panel", "worker", "-Q", "training"),
                *("-l", "info", "--concurrency", "1", "--prefetch-multiplier", "1"),
                *("-n", f"gpu-{uuid.uuid4()}@%h", *pool),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # Its pool processes too are stopped as one group.
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        """SIGTERM (a warm shutdown waits for its job: end the trainer first), then the
        group's SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        procs.kill_group(self.process.pid)
        self.log.close()


def test_a_training_worker_runs_a_queued_job_to_success(world, tmp_path):
    worker = Worker(world, tmp_path)
    try:
        job_id = _enqueue(world, "ok")

        def finished():
            assert worker.process.poll() is None, worker.output()
            row = _row(world, "ai_trainingjob", job_id, "status, error, worker")
            return row if row[0] not in ("queued", "running") else None

        status, error, name = wait_for(finished, 90, "the worker to run the job")
    finally:
        worker.stop()

    assert (status, error) == ("succeeded", "")
    assert name.startswith("gpu-")
    fmt, path, node = _row(world, "ai_trainedartifact", job_id, "format, path, node")
    assert (fmt, node) == ("hf_lora", "local")
    assert Path(path).is_relative_to(tmp_path / "training") and Path(path).is_dir()


def test_a_job_whose_worker_was_killed_is_failed_by_the_orphan_check_and_its_trainer_ends(
    world, tmp_path
):
    # The solo pool runs the task in the worker's own process: SIGKILL takes the runner.
    worker = Worker(world, tmp_path, "--pool", "solo")
    trainer_pid = None
    try:
        # A trainer that reports a step every 0.2 s for two minutes.
        job_id = _enqueue(world, "ok", "--steps", "600", "--sleep", "0.2")

        def started():
            assert worker.process.poll() is None, worker.output()
            return _row(world, "ai_trainingjob", job_id, "pid")[0]

        trainer_pid = wait_for(started, 90, "the worker to start the trainer")
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        assert _row(world, "ai_trainingjob", job_id, "status") == ("running",)
        # Its next line finds its stdout's pipe broken: the trainer does not outlive the worker.
        wait_for(lambda: not procs.is_alive(trainer_pid, None), 10, "the trainer to end")

        # Beat's check, once the heartbeat is older than TRAINING_ORPHAN_AFTER.
        orphans = {**world, "TRAINING_ORPHAN_AFTER": "1"}
        check = "from ai.tasks import training_orphans_task; training_orphans_task()"

        def failed():
            _manage(orphans, "shell", "-c", check)
            return _row(world, "ai_trainingjob", job_id, "status, error")[0] == "failed"

        wait_for(failed, 30, "the orphan check to fail the job")
    finally:
        if trainer_pid:
            procs.kill_group(trainer_pid)
        worker.stop()

    assert _row(world, "ai_trainingjob", job_id, "error") == (
        "the worker running it stopped answering (no heartbeat for 1 seconds)",
    )
    assert _row(world, "ai_trainedartifact", job_id, "id") is None


def test_a_worker_busy_training_holds_no_second_job_from_an_idle_one(world, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    workers = [Worker(world, tmp_path / "a"), Worker(world, tmp_path / "b")]
    long_pid = None
    try:
        long_job = _enqueue(world, "sleep")

        def started():
            for worker in workers:
                assert worker.process.poll() is None, worker.output()
            return _row(world, "ai_trainingjob", long_job, "pid")[0]

        long_pid = wait_for(started, 90, "a worker to start the long job")
        # Either worker may poll the queue first: the busy one must not take this job.
        short_job = _enqueue(world, "ok")

        def finished():
            return _row(world, "ai_trainingjob", short_job, "status")[0] == "succeeded"

        wait_for(finished, 60, "the idle worker to run the second job")
        long_status, long_worker = _row(world, "ai_trainingjob", long_job, "status, worker")
        short_worker = _row(world, "ai_trainingjob", short_job, "worker")[0]
    finally:
        if long_pid:
            procs.kill_group(long_pid)
        for worker in workers:
            worker.stop()

    assert long_status == "running"
    assert short_worker != long_worker
