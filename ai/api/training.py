"""Seed 004's training routes: /api/v1/ai/training (list), .../start, .../{job_id}/status, /cancel.

Every route needs the key's ``manage`` permission (a management route, like seed 003's);
start and cancel also the admin or trainer role. Each view parses, calls one service or selector in Django's sync
thread, and renders the job.
"""

from __future__ import annotations

from collections.abc import Callable

from accounts.authentication import Identity
from accounts.models import Permission, User
from panel.db import run_sync
from panel.errors import AuthenticationFailed, ErrorCode, InvalidRequest

from ..models import TrainingJob
from ..training import selectors, services
from .base import ai_route, json_body, json_response

START_FIELDS = {
    "base_model",
    "dataset",
    "epochs",
    "hyperparameters",
    "trainer",
    "suffix",
    "organisation",
    "validation_dataset",
}


def caller_load(identity: Identity) -> User:
    """The caller's user row (sync); a disabled account is not authenticated."""
    user = User.objects.filter(pk=identity.user_id, is_active=True).first()
    if user is None:
        raise AuthenticationFailed("This account is disabled.")
    return user


async def as_caller(identity: Identity, fn: Callable, /, **kwargs):
    """``fn(user=<the caller>, **kwargs)`` in the sync thread."""
    return await run_sync(lambda: fn(user=caller_load(identity), **kwargs))


def known_fields(body: dict, known: set[str]) -> dict:
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(
            f"Unknown field '{unknown[0]}'.", param=unknown[0], code=ErrorCode.INVALID_VALUE
        )
    return body


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def job_status(job: TrainingJob) -> dict:
    """A job as seed 004's status route shows it."""
    percent = (
        round(100 * min(job.step, job.total_steps) / job.total_steps, 1)
        if job.total_steps
        else (100.0 if job.status == "succeeded" else 0.0)
    )
    artifact = getattr(job, "artifact", None)
    return {
        "id": job.public_id,
        "object": "training.job",
        "status": job.status,
        "base_model": job.base_model_name,
        "dataset": job.dataset.public_id if job.dataset else None,
        "validation_dataset": job.validation_dataset.public_id if job.validation_dataset else None,
        "trainer": job.trainer.name if job.trainer else None,
        "trainer_kind": job.trainer_kind,
        "organisation": job.organisation.slug if job.organisation else None,
        "epochs": job.epochs,
        "hyperparameters": job.hyperparameters,
        "suffix": job.suffix or None,
        "progress": {
            "step": job.step,
            "total_steps": job.total_steps,
            "epoch": job.epoch,
            "percent": percent,
        },
        "metrics": job.metrics,
        "error": job.error or None,
        "result": (
            {"artifact_id": artifact.public_id, "name": artifact.name, "format": artifact.format}
            if artifact
            else None
        ),
        "cancel_requested_at": _iso(job.cancel_requested_at),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "status_url": f"/api/v1/ai/training/{job.public_id}/status",
    }


def _start(*, user: User, identity: Identity, body: dict) -> dict:
    job = services.job_start(user=user, api_key=identity.key, **body)
    return job_status(selectors.job_get_for_user(user=user, public_id=job.public_id))


def _cancel(*, user: User, job_id: str) -> dict:
    job = selectors.job_get_for_user(user=user, public_id=job_id)
    services.job_cancel(job=job, user=user)
    return job_status(selectors.job_get_for_user(user=user, public_id=job_id))


def _status(*, user: User, job_id: str) -> dict:
    return job_status(selectors.job_get_for_user(user=user, public_id=job_id))


def _list(*, user: User, after: str | None, limit: int) -> dict:
    jobs, has_more = selectors.jobs_page(user=user, after=after, limit=limit)
    return {"object": "list", "data": [job_status(job) for job in jobs], "has_more": has_more}


@ai_route(methods={"POST": Permission.MANAGE})
async def training_start(request, identity, request_id):
    body = known_fields(json_body(request), START_FIELDS)
    return json_response(await as_caller(identity, _start, identity=identity, body=body), 202)


@ai_route(methods={"GET": Permission.MANAGE})
async def training_status(request, identity, request_id, job_id: str):
    return json_response(await as_caller(identity, _status, job_id=job_id))


@ai_route(methods={"POST": Permission.MANAGE})
async def training_cancel(request, identity, request_id, job_id: str):
    return json_response(await as_caller(identity, _cancel, job_id=job_id), 202)


@ai_route(methods={"GET": Permission.MANAGE})
async def training_list(request, identity, request_id):
    limit = selectors.page_limit(request.GET.get("limit"))
    after = request.GET.get("after")
    return json_response(await as_caller(identity, _list, after=after, limit=limit))
