"""Writes of training jobs: start (checks, roles, quotas, the row, the task), cancel, events,
and the orphan check (beat).

Views, the OpenAI routes and the admin call these; the runner (``runner``) writes
what it observes while a job runs.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from accounts.selectors import KeyInfo
from orgs.models import Organisation
from panel.errors import (
    ErrorCode,
    InvalidModelType,
    InvalidRequest,
    JobFinished,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    TrainingQuotaExceeded,
)

from ..models import (
    AIModel,
    Dataset,
    ModelKind,
    Trainer,
    TrainerKind,
    TrainingEvent,
    TrainingEventKind,
    TrainingJob,
    TrainingStatus,
)
from ..selectors import models_for_caller, registry_load, user_info_load
from . import selectors

logger = logging.getLogger("switchboard.training")
MAX_EPOCHS = 100
DEFAULT_EPOCHS = 3
TRAINABLE_KINDS = (ModelKind.CHAT, ModelKind.COMPLETION)
SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The permission of the trainer role (ai/migrations/0016_training_roles.py).
TRAINER_PERMISSION = "ai.add_trainingjob"
ACTIVE = (TrainingStatus.QUEUED, TrainingStatus.RUNNING)


# --- Hyperparameters: each known key and its check; "auto" (OpenAI's) means the default.


def _positive_number(value) -> bool:
    return _is_number(value) and value > 0


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_from(low: int):
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


HYPERPARAMETERS: dict[str, tuple[Any, str, bool]] = {
    # name: (check, what it must be, whether "auto" is accepted)
    "method": (lambda v: v in ("lora", "full"), '"lora" or "full"', False),
    "learning_rate": (_positive_number, "a number above 0", True),
    "learning_rate_multiplier": (_positive_number, "a number above 0", True),
    "batch_size": (_int_from(1), "an integer of at least 1", True),
    "max_steps": (_int_from(1), "an integer of at least 1", False),
    "lora_r": (_int_from(1), "an integer of at least 1", False),
    "lora_alpha": (_positive_number, "a number above 0", False),
    "lora_dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number from 0 to below 1", False),
    "max_seq_len": (_int_from(1), "an integer of at least 1", False),
    "seed": (_int_from(0), "an integer of at least 0", False),
    "device": (lambda v: v in ("auto", "cpu", "cuda"), '"auto", "cpu" or "cuda"', False),
}


def hyperparameters_check(value, *, param: str = "hyperparameters") -> dict:
    """The hyperparameters as stored: known keys, typed; "auto" left out (the trainer's default)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{param} must be an object.", param)
    checked = {}
    for name, item in value.items():
        if name not in HYPERPARAMETERS:
            known = ", ".join(sorted(HYPERPARAMETERS))
            raise _invalid(f"Unknown hyperparameter '{name}'; known: {known}.", f"{param}.{name}")
        check, wanted, takes_auto = HYPERPARAMETERS[name]
        if takes_auto and item == "auto":
            continue
        if not check(item):
            auto = ' or "auto"' if takes_auto else ""
            raise _invalid(f"{param}.{name} must be {wanted}{auto}.", f"{param}.{name}")
        checked[name] = item
    return checked


def epochs_check(value, *, param: str = "epochs") -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_EPOCHS):
        raise _invalid(f"{param} must be an integer from 1 to {MAX_EPOCHS}.", param)
    return value


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.INVALID_VALUE)


# --- Roles


def may_train(user: User) -> bool:
    """The admin role (staff) or the trainer role."""
    return user.is_staff or user.has_perm(TRAINER_PERMISSION)


def job_check_may_change(*, user: User, job: TrainingJob) -> None:
    """403 unless ``user`` may start or cancel jobs of the job's owner (it is visible to them)."""
    if not may_train(user):
        raise PermissionDenied(
            "Starting and cancelling training jobs needs the admin or trainer role."
        )
    if user.is_staff:
        return
    owned = (
        job.organisation.memberships.filter(user=user).exists()
        if job.organisation_id
        else job.created_by_id == user.pk
    )
    if not owned:
        raise PermissionDenied("You may not change this organisation's training jobs.")


# --- Start


def _base_model(*, user: User, key: KeyInfo | None, name) -> AIModel:
    """The model by name if the caller may use it (a link of theirs or their organisation's)."""
    if not isinstance(name, str) or not name:
        raise _invalid("base_model must be the name of a model.", "base_model")
    caller = user_info_load(user.pk)
    usable = {m.name: m for m in models_for_caller(registry_load(), caller, key)}
    info = usable.get(name)
    if info is None:
        raise ModelNotFound(
            f"The model '{name}' does not exist or you do not have access to it.",
            param="base_model",
            available_models=sorted(usable),
        )
    if info.kind not in TRAINABLE_KINDS:
        raise InvalidModelType(
            f"Model '{name}' is a {info.kind} model; only chat and completion models can be "
            "fine-tuned.",
            param="base_model",
        )
    return AIModel.objects.get(pk=info.id)


def _trainer(name) -> Trainer:
    """The active trainer named ``name``, or the default one."""
    if name is None:
        trainer = Trainer.objects.filter(is_default=True, is_active=True).first()
        if trainer is None:
            raise _invalid("No default trainer is configured: name one.", "trainer")
        return trainer
    if not isinstance(name, str):
        raise _invalid("trainer must be the name of a trainer.", "trainer")
    trainer = Trainer.objects.filter(name=name, is_active=True).first()
    if trainer is None:
        raise _invalid(f"There is no active trainer named '{name}'.", "trainer")
    return trainer


def _trainer_check(trainer: Trainer, model: AIModel) -> None:
    """400 when ``trainer`` cannot train ``model``, saying why."""
    if trainer.kind == TrainerKind.BUILTIN and not model.train_path:
        reason = f"model '{model.name}' has no train_path (local weights) for the built-in trainer"
    elif trainer.kind == TrainerKind.COMMAND and not trainer.command:
        reason = "it has no command"
    elif trainer.kind == TrainerKind.UPSTREAM and trainer.upstream_id is None:
        reason = "it has no upstream"
    else:
        return
    raise _invalid(f"The trainer '{trainer.name}' cannot train this job: {reason}.", "trainer")


def _organisation(*, user: User, key: KeyInfo | None, ref, dataset: Dataset) -> Organisation | None:
    """The owner of the job: the one named, else the key's, else the dataset's."""
    if ref is None:
        org_id = key.organisation_id if key and key.organisation_id else dataset.organisation_id
        return Organisation.objects.filter(pk=org_id).first() if org_id else None
    orgs = Organisation.objects.all()
    if not user.is_staff:
        orgs = orgs.filter(memberships__user=user)
    if isinstance(ref, int) and not isinstance(ref, bool):
        org = orgs.filter(pk=ref).first()
    elif isinstance(ref, str):
        org = orgs.filter(slug=ref).first()
    else:
        raise _invalid("organisation must be an organisation's slug or id.", "organisation")
    if org is None:
        raise NotFound(f"There is no organisation '{ref}' of yours.", param="organisation")
    if key and key.organisation_id and key.organisation_id != org.pk:
        raise PermissionDenied("This API key acts for another organisation.", param="organisation")
    return org


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def minutes_used(organisation: Organisation, now: datetime) -> float:
    """Training minutes this UTC month: finished jobs' time and running jobs' time so far."""
    jobs = TrainingJob.objects.filter(organisation=organisation)
    start = month_start(now.astimezone(UTC))
    finished = jobs.filter(finished_at__gte=start).aggregate(s=Sum("seconds_used"))["s"] or 0.0
    running = jobs.filter(status=TrainingStatus.RUNNING, started_at__isnull=False)
    elapsed = sum((now - job.started_at).total_seconds() for job in running.only("started_at"))
    return (finished + elapsed) / 60


def _quotas_check(organisation: Organisation | None) -> None:
    """429 when the organisation already runs its share of jobs or used its minutes."""
    if organisation is None:
        return
    # The row lock makes concurrent starts of one organisation take turns.
    org = Organisation.objects.select_for_update().get(pk=organisation.pk)
    limit = org.max_training_jobs
    if limit is not None:
        active = TrainingJob.objects.filter(organisation=org, status__in=ACTIVE).count()
        if active >= limit:
            raise TrainingQuotaExceeded(
                f"The organisation '{org.name}' has {active} training job(s) queued or running, "
                f"its limit ({limit}); wait for one to finish or cancel one."
            )
    minutes = org.training_minutes_per_month
    if minutes is not None and minutes_used(org, timezone.now()) >= minutes:
        raise TrainingQuotaExceeded(
            f"The organisation '{org.name}' has used its {minutes} training minutes this month "
            "(UTC)."
        )


def job_start(
    *,
    user: User,
    api_key: KeyInfo | None,
    base_model=None,
    dataset=None,
    epochs=DEFAULT_EPOCHS,
    hyperparameters=None,
    trainer=None,
    suffix=None,
    organisation=None,
    validation_dataset=None,
) -> TrainingJob:
    """Check the request, the caller's role and the quotas; create the job QUEUED and enqueue it."""
    epochs = epochs_check(epochs)
    hyperparameters = hyperparameters_check(hyperparameters)
    if suffix is not None and not (isinstance(suffix, str) and SUFFIX.fullmatch(suffix)):
        raise _invalid("suffix must be 1 to 64 letters, digits, '.', '_' or '-'.", "suffix")
    if not may_train(user):
        raise PermissionDenied("Starting training jobs needs the admin or trainer role.")
    model = _base_model(user=user, key=api_key, name=base_model)
    training = selectors.dataset_for_job(user=user, ref=dataset, param="dataset")
    validation = (
        selectors.dataset_for_job(user=user, ref=validation_dataset, param="validation_dataset")
        if validation_dataset is not None
        else None
    )
    chosen = _trainer(trainer)
    _trainer_check(chosen, model)
    owner = _organisation(user=user, key=api_key, ref=organisation, dataset=training)
    with transaction.atomic():
        _quotas_check(owner)
        job = TrainingJob.objects.create(
            organisation=owner,
            created_by=user,
            api_key_id=api_key.id if api_key else None,
            base_model=model,
            base_model_name=model.name,
            dataset=training,
            validation_dataset=validation,
            trainer=chosen,
            trainer_kind=chosen.kind,
            epochs=epochs,
            hyperparameters=hyperparameters,
            suffix=suffix or "",
        )
        event_add(
            job=job,
            kind=TrainingEventKind.STATUS,
            message="Job queued.",
            data={"status": job.status},
        )
        transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _enqueue(job_id: int) -> None:
    from ..tasks import training_run_task  # ai.tasks imports this app's runner

    training_run_task.delay(job_id)


# --- Cancel


def job_cancel(*, job: TrainingJob, user: User | None = None) -> TrainingJob:
    """Cancel a job: a queued one at once, a running one by asking its runner; 409 when finished.

    ``user`` None is the system acting (an admin's action checks its own permission).
    """
    if user is not None:
        job_check_may_change(user=user, job=job)
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            raise JobFinished(f"The training job {job.public_id} has already {job.status}.")
        now = timezone.now()
        if job.status == TrainingStatus.QUEUED:
            job.status, job.finished_at = TrainingStatus.CANCELLED, now
            job.save(update_fields=["status", "finished_at", "updated_at"])
            event_add(
                job=job,
                kind=TrainingEventKind.STATUS,
                message="Job cancelled.",
                data={"status": job.status},
            )
        elif job.cancel_requested_at is None:
            job.cancel_requested_at = now
            job.save(update_fields=["cancel_requested_at", "updated_at"])
            event_add(
                job=job,
                kind=TrainingEventKind.STATUS,
                message="Cancel requested.",
                data={"status": job.status},
            )
    return job


# --- Events


def event_add(
    *, job: TrainingJob, kind: str, message: str = "", level: str = "info", data=None, step=None
) -> TrainingEvent:
    """One line of the job's history."""
    return TrainingEvent.objects.create(
        job=job, kind=kind, message=message, level=level, data=data or {}, step=step
    )
