"""One training job on a Celery worker: claim it, run its trainer, write what happens.

``job_run`` claims a queued job (QUEUED -> RUNNING in one UPDATE, so a redelivered
task never runs a job twice), writes the dataset and the config file into the job's
directory (``trainers``) and starts the trainer in a session, and so a process group,
of its own. One loop in the task's thread reads the trainer's stdout (the protocol)
and stderr with a selector, so that no read blocks the look at the job's row every
POLL_INTERVAL: a cancel or the row's deletion stops the trainer; so does the timeout.
Stopping is SIGTERM to the whole group, SIGKILL after KILL_GRACE seconds, then
reaping: nothing the trainer started is left.

Progress goes to the row at most every TRAINING_HEARTBEAT_INTERVAL seconds with the
heartbeat (the orphan check fails a job whose heartbeat stops); every metrics line
and every log line (stdout's, and stderr's too) becomes a TrainingEvent, up to
MAX_EVENTS a job of which MAX_LOG_EVENTS log lines; one warning event says when
more were dropped. While the database is away the trainer keeps running and the
writes wait; the final one is retried for TRAINING_ORPHAN_AFTER seconds (after that
the orphan check would fail the job anyway).

The end, in one transaction: succeeded with its TrainedArtifact (exit 0 after a
``result`` line), else failed (the reason: the trainer's last ``error`` line, else
its stderr's tail) or cancelled, with no artifact and the job's directory removed.
An upstream trainer's job goes to ``ai.training.upstream.job_run_upstream``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from django.conf import settings
from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.utils import timezone

from ..instances import procs
from ..models import (
    ArtifactFormat,
    TrainedArtifact,
    TrainerKind,
    TrainingEvent,
    TrainingEventKind,
    TrainingJob,
    TrainingStatus,
)
from . import protocol, trainers

logger = logging.getLogger("switchboard.training")

DATABASE_ERRORS = (OperationalError, InterfaceError)
# Seconds between the looks at the job's row (a cancel is seen within this).
POLL_INTERVAL = 0.5
# Seconds from SIGTERM to the trainer's group to SIGKILL.
KILL_GRACE = 5.0
# Seconds to read what is left in the pipes once the trainer has exited.
EXIT_GRACE = 1.0
# A job's events in all, and of them log lines. Status events are always written.
MAX_EVENTS = 10_000
MAX_LOG_EVENTS = 2_000
# Lines of stderr kept for the error of a trainer that fails without an ``error`` line.
STDERR_TAIL = 20
# An unfinished line longer than this is cut (a trainer printing without newlines).
MAX_PENDING_BYTES = 64 * 1024
MAX_ERROR = 4000

# What the runner's database calls return while the database is away.
AWAY = object()


def job_run(job_id: int, *, worker: str = "", task_id: str = "") -> None:
    """Run the queued job ``job_id`` to its end; a job that is not queued: nothing."""
    job = _claim(job_id, worker=worker or socket.gethostname(), task_id=task_id)
    if job is None:
        return
    run = Run(job)
    if job.trainer_kind == TrainerKind.UPSTREAM:
        run.track_progress = False
        run.upstream()
    else:
        run.program()


def _claim(job_id: int, *, worker: str, task_id: str) -> TrainingJob | None:
    now = timezone.now()
    fields = {
        "status": TrainingStatus.RUNNING,
        "worker": worker[:255],
        "started_at": now,
        "heartbeat_at": now,
        "updated_at": now,
    }
    if task_id:
        fields["task_id"] = task_id

    def claim() -> bool:
        with transaction.atomic():
            queued = TrainingJob.objects.filter(pk=job_id, status=TrainingStatus.QUEUED)
            if not queued.update(**fields):
                return False
            TrainingEvent.objects.create(
                job_id=job_id,
                kind=TrainingEventKind.STATUS,
                message=f"running on {worker}",
                data={"status": TrainingStatus.RUNNING},
            )
            return True

    if not _persist(claim, f"claim training job {job_id}"):
        return None
    related = ("trainer", "trainer__upstream", "base_model", "dataset", "validation_dataset")
    return TrainingJob.objects.select_related(*related).get(pk=job_id)


def _attempt(fn):
    """``fn()``, or AWAY when the database is away (its broken connection dropped)."""
    try:
        return fn()
    except DATABASE_ERRORS as exc:
        logger.warning("training: the database is away (%s); the trainer keeps running", exc)
        for conn in connections.all(initialized_only=True):
            if not conn.in_atomic_block:
                conn.close_if_unusable_or_obsolete()
        return AWAY


def _persist(fn, what: str):
    """``fn()`` retried while the database is away, for TRAINING_ORPHAN_AFTER seconds (a
    job whose heartbeat is that old is failed by the orphan check anyway); None then."""
    deadline = time.monotonic() + settings.TRAINING_ORPHAN_AFTER
    delay = 0.25
    while (result := _attempt(fn)) is AWAY:
        if time.monotonic() >= deadline:
            logger.error("training: gave up trying to %s: the database stayed away", what)
            return None
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    return result


class Lines:
    """A pipe's bytes as lines; a line longer than MAX_PENDING_BYTES is cut."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.cutting = False

    def feed(self, chunk: bytes) -> list[str]:
        self.pending += chunk
        lines = []
        while (end := self.pending.find(b"\n")) >= 0:
            line = bytes(self.pending[:end])
            del self.pending[: end + 1]
            if self.cutting:
                self.cutting = False  # the end of a line already cut
            else:
                lines.append(line)
        if len(self.pending) > MAX_PENDING_BYTES:
            if not self.cutting:
                lines.append(bytes(self.pending[: protocol.MAX_LINE]))
            self.cutting = True
            self.pending.clear()
        return [line.decode("utf-8", "replace") for line in lines]

    def close(self) -> list[str]:
        rest, self.pending = bytes(self.pending), bytearray()
        return [rest.decode("utf-8", "replace")] if rest and not self.cutting else []


class Run:
    """One claimed job: its trainer, what it reported, and how it ended."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.directory = trainers.job_dir(job)
        self.started = time.monotonic()
        timeout = job.trainer.timeout_seconds if job.trainer else None
        self.timeout = timeout or settings.TRAINING_JOB_TIMEOUT
        self.track_progress = True
        self.pid: int | None = None
        self.stop_reason = ""  # cancelled, timeout, gone (deleted or ended elsewhere)
        self.next_look = self.started + POLL_INTERVAL
        self.next_heartbeat = self.started + settings.TRAINING_HEARTBEAT_INTERVAL
        # What the trainer reported.
        self.step, self.total_steps, self.epoch = 0, None, 0.0
        self.metrics: dict[str, float] = {}
        self.result: protocol.Line | None = None
        self.last_error = ""
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        # Events not yet written, and how many this job has had.
        self.pending: list[TrainingEvent] = []
        self.events = self.log_events = 0
        self.dropped_events = self.dropped_logs = False

    # --- a trainer program ----------------------------------------------------------------

    def program(self) -> None:
        try:
            argv, env = self.prepare()
        except trainers.CannotRun as exc:
            self.finish(TrainingStatus.FAILED, str(exc))
            return
        try:
            process = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self.finish(TrainingStatus.FAILED, f"the trainer could not start: {argv[0]}: {exc}")
            return
        try:
            self.watch(process)
        except BaseException:
            # A fault of the runner itself (or the worker's cold shutdown): the trainer
            # must not outlive it, and the job must not stay running.
            self.stop(process, selectors.DefaultSelector(), {})
            self.finish(TrainingStatus.FAILED, "the runner stopped on an unexpected error")
            raise
        self.conclude(process.returncode)

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        job = self.job
        if job.dataset is None:
            raise trainers.CannotRun("the job's dataset was deleted")
        if job.trainer_kind == TrainerKind.BUILTIN and not (
            job.base_model and job.base_model.train_path
        ):
            raise trainers.CannotRun(
                f"the base model {job.base_model_name} has no train_path: "
                "the built-in trainer cannot fine-tune it"
            )
        try:
            (self.directory / "output").mkdir(parents=True, exist_ok=True)
            dataset = self.directory / "train.jsonl"
            dataset.write_bytes(bytes(job.dataset.content))
            validation = None
            if job.validation_dataset is not None:
                validation = self.directory / "validation.jsonl"
                validation.write_bytes(bytes(job.validation_dataset.content))
            config = trainers.write_config(
                job, dataset, self.directory / "output", validation_dataset_path=validation
            )
        except OSError as exc:
            raise trainers.CannotRun(f"the job's files could not be written: {exc}") from exc
        return trainers.command(job, config), trainers.environment(job)

    def watch(self, process: subprocess.Popen) -> None:
        """Read the trainer's output and look at the row until it ends or must stop."""
        self.pid = process.pid  # written with the heartbeat, and at once:
        _attempt(lambda: self._running().update(pid=process.pid))
        selector = selectors.DefaultSelector()
        readers = {}
        for pipe, handle in ((process.stdout, self.on_stdout), (process.stderr, self.on_stderr)):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ)
            readers[pipe] = (Lines(), handle)
        exited_at = None
        while not self.stop_reason:
            self.pump(selector, readers, 0.2)
            self.tick()
            if process.poll() is not None:
                exited_at = exited_at or time.monotonic()
                # Done once the pipes are closed, or a while after the exit (a process
                # the trainer left behind may hold them open: stop() ends it).
                if not selector.get_map() or time.monotonic() - exited_at > EXIT_GRACE:
                    break
        self.stop(process, selector, readers)

    def pump(self, selector, readers, timeout: float) -> None:
        """Handle the lines that arrive within ``timeout`` seconds."""
        if not selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in selector.select(timeout):
            lines, handle = readers[key.fileobj]
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if chunk:
                texts = lines.feed(chunk)
            else:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                texts = lines.close()
            for text in texts:
                handle(text)

    def stop(self, process: subprocess.Popen, selector, readers) -> None:
        """End the trainer's group (SIGTERM, SIGKILL after KILL_GRACE), reading on."""
        pgid = process.pid
        if process.poll() is None or procs.group_members(pgid):
            procs.signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE
            while process.poll() is None or procs.group_members(pgid):
                if time.monotonic() >= deadline:
                    procs.kill_group(pgid)
                    break
                self.pump(selector, readers, 0.1)
        process.wait()
        # Every writer is gone: read what is left, then close.
        end = time.monotonic() + EXIT_GRACE
        while selector.get_map() and time.monotonic() < end:
            self.pump(selector, readers, 0.05)
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
            key.fileobj.close()
        selector.close()

    # --- an upstream's fine-tuning API ------------------------------------------------------

    def upstream(self) -> None:
        try:
            from . import upstream
        except ImportError:
            self.finish(TrainingStatus.FAILED, "the upstream trainer is not installed")
            return

        def should_stop() -> str | None:
            self.tick()
            # A deleted job stops like a cancelled one; conclude() then writes nothing.
            return {"cancelled": "cancelled", "gone": "cancelled", "timeout": "timeout"}.get(
                self.stop_reason
            )

        try:
            outcome = upstream.job_run_upstream(self.job, should_stop)
        except Exception:
            # Its message may carry what the upstream said about its credentials: the
            # worker's log has it, the job's error (which users read) does not.
            logger.exception("training job %s: the upstream trainer failed", self.job.public_id)
            self.finish(TrainingStatus.FAILED, "the upstream trainer stopped on an error")
            return
        if self.stop_reason == "gone":
            self.conclude(None)
        elif outcome.status == TrainingStatus.SUCCEEDED and outcome.fine_tuned_model:
            trainer = self.job.trainer
            self.finish(
                TrainingStatus.SUCCEEDED,
                "",
                artifact={
                    "format": ArtifactFormat.UPSTREAM,
                    "upstream": trainer.upstream if trainer else None,
                    "upstream_model_id": outcome.fine_tuned_model,
                },
            )
        elif outcome.status == TrainingStatus.CANCELLED:
            self.finish(TrainingStatus.CANCELLED, "")
        else:
            error = outcome.error or self._stop_error() or "the upstream job failed"
            self.finish(TrainingStatus.FAILED, error)

    # --- the trainer's lines ------------------------------------------------------------------

    def on_stdout(self, text: str) -> None:
        line = protocol.parse(text)
        if line is None:
            return
        if line.event in ("progress", "metrics"):
            self.on_progress(line)
        elif line.event == "result":
            self.result = line
            self.event(TrainingEventKind.LOG, f"result: {line.format} at {line.path}")
        elif line.event == "error":
            self.last_error = line.message
            self.event(TrainingEventKind.LOG, line.message, level="error")
        else:
            self.event(TrainingEventKind.LOG, line.message, level=line.level)

    def on_stderr(self, text: str) -> None:
        text = text.rstrip()[: protocol.MAX_LINE]
        if text.strip():
            self.stderr_tail.append(text)
            self.event(TrainingEventKind.LOG, text, data={"stream": "stderr"})

    def on_progress(self, line: protocol.Line) -> None:
        if line.step is not None:
            self.step = line.step
        if line.total_steps is not None:
            self.total_steps = line.total_steps
        if line.epoch is not None:
            self.epoch = line.epoch
        if line.metrics:
            self.metrics = {**self.metrics, **line.metrics}
            shown = ", ".join(f"{name}={value:g}" for name, value in line.metrics.items())
            self.event(
                TrainingEventKind.METRICS,
                f"step {self.step}: {shown}",
                data=line.metrics,
                step=self.step,
            )

    def event(self, kind: str, message: str, *, level="info", data=None, step=None) -> None:
        """Keep an event for the next write, within the job's caps."""
        if kind == TrainingEventKind.LOG and self.log_events >= MAX_LOG_EVENTS:
            if not self.dropped_logs:
                self.dropped_logs = True
                self._event(f"more than {MAX_LOG_EVENTS} log lines: later ones are not kept")
            return
        if self.events >= MAX_EVENTS:
            if not self.dropped_events:
                self.dropped_events = True
                self._event(f"more than {MAX_EVENTS} events: later ones are not kept")
            return
        self.events += 1
        self.log_events += kind == TrainingEventKind.LOG
        self._event(message, kind=kind, level=level, data=data, step=step)

    def _event(self, message: str, *, kind=TrainingEventKind.LOG, level="warning", **fields):
        self.pending.append(
            TrainingEvent(
                job_id=self.job.pk,
                kind=kind,
                level=level,
                message=message,
                data=fields.get("data") or {},
                step=fields.get("step"),
            )
        )

    # --- the row ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Every POLL_INTERVAL: write events (and the heartbeat when due), look for a cancel."""
        now = time.monotonic()
        if self.stop_reason or now < self.next_look:
            return
        if now - self.started >= self.timeout:
            self.stop_reason = "timeout"
            return
        self.next_look = now + POLL_INTERVAL
        self.flush()
        if now >= self.next_heartbeat and _attempt(self.heartbeat) is not AWAY:
            self.next_heartbeat = now + settings.TRAINING_HEARTBEAT_INTERVAL
        row = _attempt(
            lambda: (
                TrainingJob.objects.filter(pk=self.job.pk)
                .values_list("status", "cancel_requested_at")
                .first()
            )
        )
        if row is AWAY:
            return
        if row is None or row[0] != TrainingStatus.RUNNING:
            self.stop_reason = "gone"
        elif row[1] is not None:
            self.stop_reason = "cancelled"

    def heartbeat(self) -> int:
        return self._running().update(heartbeat_at=timezone.now(), **self.observed())

    def observed(self) -> dict:
        """The row's fields this runner owns, as they are now."""
        fields = {"seconds_used": time.monotonic() - self.started, "updated_at": timezone.now()}
        if self.track_progress:
            fields.update(
                step=self.step, total_steps=self.total_steps, epoch=self.epoch, metrics=self.metrics
            )
        if self.pid is not None:
            fields["pid"] = self.pid
        return fields

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            written = _attempt(lambda: self._insert(pending))
        except IntegrityError:
            self.stop_reason = "gone"  # the job's row was deleted
            return
        if written is AWAY:
            self.pending = pending + self.pending

    def _insert(self, events: list[TrainingEvent]) -> bool:
        with transaction.atomic():
            TrainingEvent.objects.bulk_create(events, batch_size=500)
        return True

    def _running(self):
        return TrainingJob.objects.filter(pk=self.job.pk, status=TrainingStatus.RUNNING)

    # --- the end ------------------------------------------------------------------------------

    def conclude(self, returncode: int | None) -> None:
        if self.stop_reason == "gone":
            logger.info("training job %s was deleted or ended elsewhere", self.job.public_id)
            shutil.rmtree(self.directory, ignore_errors=True)
        elif self.stop_reason == "cancelled":
            self.finish(TrainingStatus.CANCELLED, "")
        elif self.stop_reason == "timeout":
            self.finish(TrainingStatus.FAILED, self._stop_error())
        elif returncode == 0 and self.result is not None:
            self.succeed()
        elif returncode == 0:
            reason = self.last_error or "the trainer exited without a result"
            self.finish(TrainingStatus.FAILED, reason)
        else:
            self.finish(TrainingStatus.FAILED, self._exit_error(returncode))

    def succeed(self) -> None:
        path = Path(self.result.path)
        if not path.is_absolute():
            path = self.directory / path
        if not path.exists():
            self.finish(TrainingStatus.FAILED, f"the trainer's result is not there: {path}")
            return
        artifact = {
            "format": self.result.format,
            "path": str(path),
            "node": settings.INSTANCE_NODE,
            "bytes": _size(path),
        }
        self.finish(TrainingStatus.SUCCEEDED, "", artifact=artifact)

    def finish(self, status: str, error: str, *, artifact: dict | None = None) -> None:
        """The job's end, its last events and its artifact, in one transaction."""
        job = self.job

        def write() -> bool:
            with transaction.atomic():
                now = timezone.now()
                fields = {**self.observed(), "heartbeat_at": now, "finished_at": now}
                ended = self._running().update(status=status, error=error[:MAX_ERROR], **fields)
                if not ended:
                    return False
                if artifact is not None:
                    TrainedArtifact.objects.create(
                        job_id=job.pk,
                        organisation_id=job.organisation_id,
                        name=_name(job),
                        **artifact,
                    )
                self._event(
                    error or status, kind=TrainingEventKind.STATUS, level="error" if error else "info",
                    data={"status": status},
                )  # fmt: skip
                TrainingEvent.objects.bulk_create(self.pending, batch_size=500)
                self.pending = []
                return True

        written = _persist(write, f"write the end of training job {job.public_id}")
        if not written or status != TrainingStatus.SUCCEEDED:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            # The dataset stays in the database; its copies here are not needed.
            for name in ("train.jsonl", "validation.jsonl"):
                (self.directory / name).unlink(missing_ok=True)

    def _stop_error(self) -> str:
        if self.stop_reason == "timeout":
            return f"the job ran longer than its limit of {self.timeout} seconds and was stopped"
        return ""

    def _exit_error(self, returncode: int) -> str:
        how = f"exited with code {returncode}"
        if returncode < 0:
            how = f"was killed by signal {-returncode}"
            with contextlib.suppress(ValueError):
                how = f"was killed by {signal.Signals(-returncode).name}"
        why = self.last_error or "\n".join(self.stderr_tail) or "it wrote nothing on stderr"
        return f"the trainer {how}: {why}"


def _name(job: TrainingJob) -> str:
    """``<base>:ft-<suffix or the job id's first 8 hex digits>``, within the column."""
    tail = f":ft-{job.suffix or job.public_id.split('-', 1)[-1][:8]}"
    return job.base_model_name[: 200 - len(tail)] + tail


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
