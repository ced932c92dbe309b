"""OpenAI's fine-tuning jobs (/v1/fine_tuning/jobs ...) on the same jobs as seed 004's routes.

The shapes are OpenAI's ``fine_tuning.job`` and ``fine_tuning.job.event``; ``model`` is
the base model, ``training_file`` and ``validation_file`` are datasets' ``file-…`` ids.
Every route needs the key's ``manage`` permission, as seed 004's do.
"""

from __future__ import annotations

import secrets

from accounts.authentication import Identity
from accounts.models import Permission, User
from panel.errors import ErrorCode, InvalidRequest

from ..models import TrainingEvent, TrainingJob
from ..training import selectors, services
from .base import ai_route, json_body, json_response
from .training import as_caller, known_fields

CREATE_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "suffix",
    "seed",
    "method",
    "metadata",
    "integrations",
}
# OpenAI's names of the hyperparameters it documents; n_epochs becomes the job's epochs.
OPENAI_HYPERPARAMETERS = {"n_epochs", "batch_size", "learning_rate_multiplier"}
LEVELS = {"debug": "info", "info": "info", "warning": "warn", "error": "error"}


def _stamp(value) -> int | None:
    return int(value.timestamp()) if value else None


def job_object(job: TrainingJob) -> dict:
    """A job as OpenAI's ``fine_tuning.job``."""
    artifact = getattr(job, "artifact", None)
    hp = job.hyperparameters
    hyperparameters = {
        "n_epochs": job.epochs,
        "batch_size": hp.get("batch_size", "auto"),
        "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
    }
    return {
        "object": "fine_tuning.job",
        "id": job.public_id,
        "model": job.base_model_name,
        "created_at": _stamp(job.created_at),
        "finished_at": _stamp(job.finished_at),
        "fine_tuned_model": artifact.name if artifact else None,
        "organization_id": job.organisation.slug if job.organisation else "",
        "result_files": [],
        "status": job.status,  # queued, running, succeeded, failed, cancelled: OpenAI's own
        "training_file": job.dataset.public_id if job.dataset else "",
        "validation_file": job.validation_dataset.public_id if job.validation_dataset else None,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "trained_tokens": None,
        "error": (
            {"code": "training_failed", "message": job.error, "param": None}
            if job.status == "failed"
            else None
        ),
        "seed": hp.get("seed", 0),
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
        "user_provided_suffix": job.suffix or None,
    }


def event_object(event: TrainingEvent) -> dict:
    """An event as OpenAI's ``fine_tuning.job.event``."""
    return {
        "object": "fine_tuning.job.event",
        "id": selectors.event_public_id(event),
        "created_at": _stamp(event.created_at),
        "level": LEVELS.get(event.level, "info"),
        "message": event.message or _metrics_message(event),
        "data": event.data,
        "type": "metrics" if event.kind == "metrics" else "message",
    }


def _metrics_message(event: TrainingEvent) -> str:
    values = ", ".join(f"{k}={v:g}" for k, v in event.data.items() if isinstance(v, int | float))
    return f"Step {event.step}: {values}" if event.step is not None else values


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ErrorCode.INVALID_VALUE)


def _method_hyperparameters(method) -> dict | None:
    """The hyperparameters inside ``method`` (only "supervised" is trained here)."""
    if method is None:
        return None
    if not isinstance(method, dict):
        raise _invalid("method must be an object.", "method")
    if method.get("type", "supervised") != "supervised":
        raise _invalid('Only the "supervised" method is supported.', "method.type")
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict):
        raise _invalid("method.supervised must be an object.", "method.supervised")
    return supervised.get("hyperparameters")


def create_arguments(body: dict) -> dict:
    """OpenAI's create body as ``services.job_start``'s arguments."""
    known_fields(body, CREATE_FIELDS)
    if body.get("integrations"):
        raise _invalid("Integrations are not supported.", "integrations")
    given = _method_hyperparameters(body.get("method"))
    param = "method.supervised.hyperparameters" if given is not None else "hyperparameters"
    if given is None:
        given = body.get("hyperparameters")
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise _invalid(f"{param} must be an object.", param)
    hyperparameters = dict(given)
    epochs = hyperparameters.pop("n_epochs", "auto")
    epochs = services.DEFAULT_EPOCHS if epochs == "auto" else epochs
    services.epochs_check(epochs, param=f"{param}.n_epochs")
    seed = body.get("seed")
    if seed is not None and not (
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
    ):
        raise _invalid("seed must be an integer of at least 0.", "seed")
    # OpenAI picks a seed when none is given, and reports it on the job.
    hyperparameters["seed"] = secrets.randbelow(2**31) if seed is None else seed
    return {
        "base_model": body.get("model"),
        "dataset": body.get("training_file"),
        "validation_dataset": body.get("validation_file"),
        "epochs": epochs,
        "hyperparameters": hyperparameters,
        "suffix": body.get("suffix"),
    }


def _create(*, user: User, identity: Identity, arguments: dict) -> dict:
    job = services.job_start(user=user, api_key=identity.key, **arguments)
    return job_object(selectors.job_get_for_user(user=user, public_id=job.public_id))


def _retrieve(*, user: User, job_id: str) -> dict:
    return job_object(selectors.job_get_for_user(user=user, public_id=job_id))


def _cancel(*, user: User, job_id: str) -> dict:
    services.job_cancel(job=selectors.job_get_for_user(user=user, public_id=job_id), user=user)
    return _retrieve(user=user, job_id=job_id)


def _list(*, user: User, after: str | None, limit: int) -> dict:
    jobs, has_more = selectors.jobs_page(user=user, after=after, limit=limit)
    return {"object": "list", "data": [job_object(job) for job in jobs], "has_more": has_more}


def _events(*, user: User, job_id: str, after: str | None, limit: int) -> dict:
    job = selectors.job_get_for_user(user=user, public_id=job_id)
    events, has_more = selectors.job_events(job=job, after=after, limit=limit)
    return {"object": "list", "data": [event_object(e) for e in events], "has_more": has_more}


@ai_route(methods={"GET": Permission.MANAGE, "POST": Permission.MANAGE})
async def jobs(request, identity, request_id):
    if request.method == "POST":
        arguments = create_arguments(json_body(request))
        return json_response(
            await as_caller(identity, _create, identity=identity, arguments=arguments)
        )
    limit = selectors.page_limit(request.GET.get("limit"))
    return json_response(
        await as_caller(identity, _list, after=request.GET.get("after"), limit=limit)
    )


@ai_route(methods={"GET": Permission.MANAGE})
async def job_detail(request, identity, request_id, job_id: str):
    return json_response(await as_caller(identity, _retrieve, job_id=job_id))


@ai_route(methods={"POST": Permission.MANAGE})
async def job_cancel(request, identity, request_id, job_id: str):
    return json_response(await as_caller(identity, _cancel, job_id=job_id))


@ai_route(methods={"GET": Permission.MANAGE})
async def job_events(request, identity, request_id, job_id: str):
    limit = selectors.page_limit(request.GET.get("limit"))
    after = request.GET.get("after")
    return json_response(
        await as_caller(identity, _events, job_id=job_id, after=after, limit=limit)
    )
