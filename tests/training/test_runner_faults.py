"""The runner against its faults: trainers that crash, hang, lie or flood; a cancel, a
timeout, a deleted job, the database away, a worker that died."""

import datetime
import threading
import time

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from ai.models import (
    TrainedArtifact,
    TrainingEvent,
    TrainingEventKind,
    TrainingJob,
    TrainingStatus,
)
from ai.tasks import training_orphans_task
from ai.training import protocol, runner
from tests.training import runner_world as world


@pytest.fixture(autouse=True)
def training_dir(settings, tmp_path):
    settings.TRAINING_OUTPUT_DIR = tmp_path / "training"
    settings.TRAINING_HEARTBEAT_INTERVAL = 0.2
    return settings.TRAINING_OUTPUT_DIR


@pytest.fixture(autouse=True)
def no_stray_processes():
    yield
    world.kill_strays()


def _failed_cleanly(job, training_dir) -> TrainingJob:
    """The job's row, after checking that a failure left nothing behind."""
    job.refresh_from_db()
    assert job.status == TrainingStatus.FAILED
    assert job.finished_at is not None
    assert not TrainedArtifact.objects.filter(job=job).exists()
    assert not (training_dir / job.public_id).exists()
    return job


@pytest.mark.django_db
def test_a_trainer_that_crashes_at_step_0_fails_the_job_with_its_stderr(training_dir):
    job = world.job("crash")

    runner.job_run(job.pk)

    job = _failed_cleanly(job, training_dir)
    assert job.error == (
        "the trainer exited with code 1: Traceback (most recent call last):\n"
        "RuntimeError: boom at step 0"
    )
    statuses = TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.STATUS)
    assert statuses.last().message == job.error


@pytest.mark.django_db
def test_a_trainers_last_error_line_is_the_jobs_error(training_dir):
    job = world.job("error")

    runner.job_run(job.pk)

    job = _failed_cleanly(job, training_dir)
    assert job.error == "the trainer exited with code 3: CUDA out of memory"


@pytest.mark.django_db
def test_a_trainer_that_exits_0_without_a_result_fails_the_job(training_dir):
    job = world.job("noresult")

    runner.job_run(job.pk)

    job = _failed_cleanly(job, training_dir)
    assert job.error == "the trainer exited without a result"
    assert (job.step, job.total_steps) == (1, 2)


@pytest.mark.django_db
def test_a_result_that_is_not_there_fails_the_job(training_dir):
    job = world.job("badresult")

    runner.job_run(job.pk)

    job = _failed_cleanly(job, training_dir)
    assert job.error == "the trainer's result is not there: /nonexistent/adapter"


@pytest.mark.django_db
def test_junk_lines_and_a_huge_line_are_kept_as_cut_log_lines(training_dir):
    job = world.job("junk")

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert job.status == TrainingStatus.SUCCEEDED
    # Only the trainer's finite numbers reach the row.
    assert job.metrics == {"loss": 2.0 / 3}
    logs = list(
        TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.LOG).values_list(
            "message", flat=True
        )
    )
    assert "not json at all" in logs
    assert "[1, 2, 3]" in logs
    assert any(m.startswith("unreadable result line") for m in logs)
    assert any("bytes that are not UTF-8" in m for m in logs)
    huge = [m for m in logs if m.startswith("xxx")]
    assert huge == ["x" * protocol.MAX_LINE]


def test_the_lines_of_a_pipe_are_cut_past_the_limit_without_losing_the_next_one():
    lines = runner.Lines()

    out = lines.feed(b"a" * (runner.MAX_PENDING_BYTES + 10))
    out += lines.feed(b"a" * 100 + b"\nnext\npart")
    out += lines.close()

    assert out == ["a" * protocol.MAX_LINE, "next", "part"]


@pytest.mark.django_db
def test_a_flood_of_lines_is_capped_per_job_and_the_cap_is_said(monkeypatch):
    monkeypatch.setattr(runner, "MAX_LOG_EVENTS", 5)
    monkeypatch.setattr(runner, "MAX_EVENTS", 12)
    job = world.job("chatty", "--steps", "20")

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert job.status == TrainingStatus.SUCCEEDED
    assert job.step == 20  # the row still follows the trainer
    events = TrainingEvent.objects.filter(job=job)
    capped = events.exclude(kind=TrainingEventKind.STATUS).exclude(level="warning")
    assert capped.count() == 12
    assert capped.filter(kind=TrainingEventKind.LOG).count() == 5
    assert list(events.filter(level="warning").values_list("message", flat=True)) == [
        "more than 5 log lines: later ones are not kept",
        "more than 12 events: later ones are not kept",
    ]
    assert [e.data["status"] for e in events.filter(kind="status")] == ["running", "succeeded"]


@pytest.mark.django_db(transaction=True)
def test_a_cancel_of_a_running_job_ends_the_trainer_and_its_grandchild(training_dir):
    job = world.job("sleep")
    run = world.Running(job)
    pids = run.trainer_pids()

    TrainingJob.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    run.join()

    assert world.gone(*pids)
    job.refresh_from_db()
    assert job.status == TrainingStatus.CANCELLED
    assert job.error == ""
    assert job.finished_at is not None
    assert not TrainedArtifact.objects.exists()
    assert not (training_dir / job.public_id).exists()
    statuses = TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.STATUS)
    assert [e.data["status"] for e in statuses] == ["running", "cancelled"]


@pytest.mark.django_db(transaction=True)
def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace(monkeypatch):
    monkeypatch.setattr(runner, "KILL_GRACE", 1.0)
    job = world.job("sleep", "--ignore-term")
    run = world.Running(job)
    pids = run.trainer_pids()

    TrainingJob.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    run.join()

    assert world.gone(*pids)
    assert TrainingJob.objects.get(pk=job.pk).status == TrainingStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_job_past_its_timeout_is_stopped_and_failed(training_dir):
    job = world.job("sleep", trainer_fields={"timeout_seconds": 1})
    run = world.Running(job)
    pids = run.trainer_pids()

    run.join()

    assert world.gone(*pids)
    job = _failed_cleanly(job, training_dir)
    assert job.error == "the job ran longer than its limit of 1 seconds and was stopped"


@pytest.mark.django_db(transaction=True)
def test_a_job_deleted_mid_run_ends_its_trainer_quietly(training_dir):
    job = world.job("sleep")
    run = world.Running(job)
    pids = run.trainer_pids()

    TrainingJob.objects.filter(pk=job.pk).delete()
    run.join()

    assert world.gone(*pids)
    assert not TrainingJob.objects.exists()
    assert not TrainingEvent.objects.exists()
    assert not TrainedArtifact.objects.exists()
    assert not (training_dir / job.public_id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_job_failed_by_the_orphan_check_meanwhile_stops_its_trainer(training_dir):
    job = world.job("sleep")
    run = world.Running(job)
    pids = run.trainer_pids()

    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingStatus.FAILED, error="orphan")
    run.join()

    assert world.gone(*pids)
    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingStatus.FAILED, "orphan")
    assert not TrainedArtifact.objects.exists()


class Outage:
    """Every query of this thread's connection fails while ``on`` is set."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.refused = 0

    def __call__(self, execute, sql, params, many, context):
        if self.on.is_set():
            self.refused += 1
            raise OperationalError("the database is away (a test's outage)")
        return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
def test_the_trainer_keeps_running_while_the_database_is_away_and_the_end_is_written(
    settings,
):
    settings.TRAINING_HEARTBEAT_INTERVAL = 0.1
    # The trainer runs for about 1.5 s; the database goes away at once and comes back
    # after it has exited, so its progress, its events and its end all wait.
    job = world.job("ok", "--steps", "5", "--sleep", "0.3")
    outage = Outage()
    original = runner.Run.watch

    def watch_in_an_outage(self, process):
        outage.on.set()
        threading.Timer(3.0, outage.on.clear).start()
        return original(self, process)

    runner.Run.watch = watch_in_an_outage
    try:
        with connection.execute_wrapper(outage):
            runner.job_run(job.pk)
    finally:
        runner.Run.watch = original

    assert outage.refused > 3
    job.refresh_from_db()
    assert job.status == TrainingStatus.SUCCEEDED
    assert job.step == 5
    assert job.pid > 0  # its first write was refused; a later one carried it
    assert TrainedArtifact.objects.filter(job=job).count() == 1
    metrics = TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.METRICS)
    assert [e.step for e in metrics] == [1, 2, 3, 4, 5]


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_end_cannot_be_written_in_time_leaves_no_artifact(settings, training_dir):
    settings.TRAINING_ORPHAN_AFTER = 1.0
    job = world.job("ok")
    outage = Outage()
    original = runner.Run.conclude

    def conclude_in_an_outage(self, returncode):
        outage.on.set()
        return original(self, returncode)

    runner.Run.conclude = conclude_in_an_outage
    try:
        with connection.execute_wrapper(outage):
            runner.job_run(job.pk)
    finally:
        runner.Run.conclude = original
        outage.on.clear()

    job.refresh_from_db()
    assert job.status == TrainingStatus.RUNNING  # the orphan check fails it later
    assert not TrainedArtifact.objects.exists()
    assert not (training_dir / job.public_id).exists()


# --- The orphan check (beat) --------------------------------------------------------------


def test_beat_runs_the_orphan_check_every_minute():
    from panel.celery import app

    entries = [
        e for e in app.conf.beat_schedule.values() if e["task"] == training_orphans_task.name
    ]
    assert [e["schedule"] for e in entries] == [60.0]


@pytest.mark.django_db
def test_the_orphan_check_fails_running_jobs_whose_worker_stopped_answering(settings):
    settings.TRAINING_ORPHAN_AFTER = 120.0
    now = timezone.now()
    old = now - datetime.timedelta(seconds=121)
    silent = world.job(status=TrainingStatus.RUNNING, started_at=old, heartbeat_at=old)
    never_beat = world.job(status=TrainingStatus.RUNNING, started_at=old)
    answering = world.job(
        status=TrainingStatus.RUNNING,
        started_at=old,
        heartbeat_at=now - datetime.timedelta(seconds=5),
    )
    queued = world.job(created_at=old)
    done = world.job(status=TrainingStatus.SUCCEEDED, started_at=old, heartbeat_at=old)

    training_orphans_task()

    reason = "the worker running it stopped answering (no heartbeat for 120 seconds)"
    for job in (silent, never_beat):
        job.refresh_from_db()
        assert (job.status, job.error) == (TrainingStatus.FAILED, reason)
        assert job.finished_at is not None
        event = TrainingEvent.objects.get(job=job)
        assert (event.kind, event.message, event.data) == ("status", reason, {"status": "failed"})
    for job, status in ((answering, "running"), (queued, "queued"), (done, "succeeded")):
        job.refresh_from_db()
        assert (job.status, job.error) == (status, "")
    assert not TrainingEvent.objects.exclude(job__in=[silent, never_beat]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_running_job_keeps_its_heartbeat_fresh_so_the_orphan_check_leaves_it(settings):
    settings.TRAINING_ORPHAN_AFTER = 1.0
    settings.TRAINING_HEARTBEAT_INTERVAL = 0.1
    job = world.job("sleep")
    run = world.Running(job)
    run.trainer_pids()
    time.sleep(1.5)

    training_orphans_task()

    assert TrainingJob.objects.get(pk=job.pk).status == TrainingStatus.RUNNING
    TrainingJob.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    run.join()
