"""A job forwarded to an upstream's OpenAI fine-tuning API, and polled until it ends.

The runner (``runner.job_run``) calls ``job_run_upstream`` for a job whose trainer is
of kind ``upstream``: the dataset is uploaded (``POST {base}/files``, purpose
fine-tune), the job created (``POST {base}/fine_tuning/jobs``) and its id kept on the
row, then the job is polled every ``TRAINING_UPSTREAM_POLL`` seconds, its status and
events mirrored into TrainingEvents, until it ends or ``should_stop`` asks for a stop
(the upstream job is then cancelled). The runner writes the outcome.

This runs on a Celery worker, not on the request path: plain sync httpx. The
upstream's key is sent, never written: every reason is cleared of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.utils import timezone

from ..models import TrainingEvent, TrainingEventKind, TrainingJob, TrainingStatus, Upstream

logger = logging.getLogger(__name__)

# Hyperparameters OpenAI's API takes (the others are the built-in trainer's).
UPSTREAM_HYPERPARAMETERS = ("batch_size", "learning_rate_multiplier")
# Polls that may fail in a row (a blip of the network) before the job does.
MAX_POLL_FAILURES = 5
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an upstream job ended: a TrainingStatus, a reason, the fine-tuned model's id."""

    status: str
    error: str = ""
    fine_tuned_model: str = ""


class UpstreamFailure(Exception):
    """The upstream refused or could not be reached: the job fails with this reason."""


def job_run_upstream(job: TrainingJob, should_stop: Callable[[], str | None]) -> Outcome:
    """Train ``job`` at its trainer's upstream; returns how it ended (the runner records it)."""
    upstream = job.trainer.upstream if job.trainer else None
    if upstream is None or not upstream.base_url:
        return Outcome(TrainingStatus.FAILED, "The trainer names no upstream with a base URL.")
    if job.dataset is None:
        return Outcome(TrainingStatus.FAILED, "The job's dataset was deleted.")
    session = _Session(upstream)
    try:
        with session:
            remote = _create(session, job)
            job.upstream_job_id = remote["id"]
            job.save(update_fields=["upstream_job_id", "updated_at"])
            _event(job, TrainingEventKind.STATUS, f"upstream job {remote['id']} created")
            return _poll(session, job, should_stop)
    except UpstreamFailure as exc:
        return Outcome(TrainingStatus.FAILED, session.redact(str(exc)))


class _Session:
    """An httpx client for one upstream whose every error message is free of its key."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.key = upstream.api_key or ""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.client = httpx.Client(
            base_url=upstream.base_url.rstrip("/") + "/", headers=headers, timeout=TIMEOUT
        )

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def redact(self, text: str) -> str:
        return text.replace(self.key, "[redacted]") if self.key else text

    def call(self, method: str, path: str, **kwargs) -> dict:
        """The JSON object the upstream answered; UpstreamFailure for anything else."""
        what = f"{method} {path.split('/')[0]}"
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(
                f"The upstream {self.upstream.name!r} could not be reached ({what}): "
                f"{type(exc).__name__}."
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict):
            raise UpstreamFailure(
                f"The upstream {self.upstream.name!r} answered {response.status_code} to "
                f"{what}: {_reason(body) or 'no readable error'}."
            )
        return body


def _reason(body) -> str:
    """The message of an OpenAI error envelope (or its ``error`` string), cut short."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:300] if error else ""


def _upload(session: _Session, dataset) -> str:
    content = bytes(dataset.content)
    files = {"file": (dataset.name or f"{dataset.public_id}.jsonl", content, "application/jsonl")}
    body = session.call("POST", "files", data={"purpose": "fine-tune"}, files=files)
    if not isinstance(body.get("id"), str):
        raise UpstreamFailure("The upstream's answer to the upload has no file id.")
    return body["id"]


def _create(session: _Session, job: TrainingJob) -> dict:
    payload = {
        "model": _upstream_model(job, session.upstream),
        "training_file": _upload(session, job.dataset),
    }
    if job.validation_dataset is not None:
        payload["validation_file"] = _upload(session, job.validation_dataset)
    options = {**(job.trainer.options or {}), **(job.hyperparameters or {})}
    hyperparameters = {"n_epochs": job.epochs}
    hyperparameters.update({k: options[k] for k in UPSTREAM_HYPERPARAMETERS if k in options})
    payload["hyperparameters"] = hyperparameters
    if job.suffix:
        payload["suffix"] = job.suffix
    remote = session.call("POST", "fine_tuning/jobs", json=payload)
    if not isinstance(remote.get("id"), str) or not remote["id"]:
        raise UpstreamFailure("The upstream's answer to the job has no id.")
    return remote


def _upstream_model(job: TrainingJob, upstream: Upstream) -> str:
    """The base model's id at that upstream: the trainer's ``model`` option, else the id
    an upstream of the base model at the same base URL sends, else its public name."""
    option = (job.trainer.options or {}).get("model")
    if isinstance(option, str) and option:
        return option
    if job.base_model_id is not None:
        same = Upstream.objects.filter(
            model_id=job.base_model_id, base_url=upstream.base_url
        ).first()
        if same is not None:
            return same.upstream_model_id
    return job.base_model_name


def _poll(session: _Session, job: TrainingJob, should_stop: Callable[[], str | None]) -> Outcome:
    """Poll the upstream job until it ends, mirroring it; cancel it when asked to stop."""
    seen: set[str] = set()
    status, failures = "", 0
    interval = settings.TRAINING_UPSTREAM_POLL
    path = f"fine_tuning/jobs/{job.upstream_job_id}"
    while True:
        reason = _wait(interval, should_stop)
        if reason:
            return _stop(session, job, path, reason)
        try:
            remote = session.call("GET", path)
            _mirror_events(session, job, path, seen)
        except UpstreamFailure as exc:
            failures += 1
            if failures >= MAX_POLL_FAILURES:
                raise
            _event(job, TrainingEventKind.LOG, session.redact(str(exc)), level="warning")
            continue
        failures = 0
        if remote.get("status") != status:
            status = str(remote.get("status"))
            _event(job, TrainingEventKind.STATUS, f"upstream: {status}")
        _heartbeat(job)
        outcome = _outcome(remote)
        if outcome is not None:
            return outcome


def _wait(seconds: float, should_stop: Callable[[], str | None]) -> str | None:
    """Sleep ``seconds``, asking ``should_stop`` at least every second."""
    deadline = time.monotonic() + seconds
    while True:
        reason = should_stop()
        left = deadline - time.monotonic()
        if reason or left <= 0:
            return reason
        time.sleep(min(left, 1.0))


def _outcome(remote: dict) -> Outcome | None:
    status = remote.get("status")
    if status == "succeeded":
        model = remote.get("fine_tuned_model")
        if not isinstance(model, str) or not model:
            return Outcome(TrainingStatus.FAILED, "The upstream job succeeded without a model id.")
        return Outcome(TrainingStatus.SUCCEEDED, fine_tuned_model=model)
    if status == "failed":
        reason = _reason(remote) or "no reason given"
        return Outcome(TrainingStatus.FAILED, f"The upstream job failed: {reason}")
    if status == "cancelled":
        return Outcome(TrainingStatus.CANCELLED, "The job was cancelled at the upstream.")
    return None


def _stop(session: _Session, job: TrainingJob, path: str, reason: str) -> Outcome:
    try:
        session.call("POST", f"{path}/cancel")
    except UpstreamFailure as exc:
        # The job ends here either way; the operator may have to cancel it upstream.
        _event(job, TrainingEventKind.LOG, session.redact(str(exc)), level="warning")
    if reason == "cancelled":
        return Outcome(TrainingStatus.CANCELLED)
    return Outcome(
        TrainingStatus.FAILED, f"The job was stopped ({reason}); the upstream job was cancelled."
    )


def _mirror_events(session: _Session, job: TrainingJob, path: str, seen: set[str]) -> None:
    """Store the upstream events not stored yet, oldest first; metrics update the job."""
    events = session.call("GET", f"{path}/events", params={"limit": 100}).get("data")
    for event in reversed(events if isinstance(events, list) else []):
        if not isinstance(event, dict) or event.get("id") in seen:
            continue
        seen.add(event.get("id"))
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        step = data.get("step") if isinstance(data.get("step"), int) else None
        loss = data.get("train_loss")
        if step is not None and isinstance(loss, int | float):
            _metrics(job, step, data.get("total_steps"), float(loss))
        level = event.get("level") if event.get("level") in ("info", "warning", "error") else "info"
        _event(job, TrainingEventKind.LOG, str(event.get("message", ""))[:4000], level=level)


def _metrics(job: TrainingJob, step: int, total, loss: float) -> None:
    job.step = max(step, 0)
    if isinstance(total, int) and total > 0:
        job.total_steps = total
    job.metrics = {"loss": loss}
    job.save(update_fields=["step", "total_steps", "metrics", "updated_at"])
    TrainingEvent.objects.create(
        job=job, kind=TrainingEventKind.METRICS, step=job.step, data={"loss": loss}
    )


def _heartbeat(job: TrainingJob) -> None:
    # The orphan check (beat) reads heartbeat_at: a long upstream job is alive while polled.
    job.heartbeat_at = timezone.now()
    job.save(update_fields=["heartbeat_at", "updated_at"])


def _event(job: TrainingJob, kind: str, message: str, *, level: str = "info") -> None:
    TrainingEvent.objects.create(job=job, kind=kind, level=level, message=message)
