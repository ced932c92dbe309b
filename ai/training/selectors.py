"""Reads of training rows on a user's behalf: the tenancy checks live here, once.

A dataset or job is visible to staff, to members of its organisation, and to its
creator when it has no organisation (``owned_by``); anything else is "not found".
Changing one (upload, delete, start, cancel) needs staff or the trainer role's
permission, and (for non-staff) the organisation's membership or, for an
organisation-less row, being its creator.
"""

from __future__ import annotations

import re

from django.db.models import Q, QuerySet

from accounts.models import User
from orgs.models import Membership
from panel.errors import ErrorCode, InvalidRequest, NotFound

from ..models import Dataset, TrainingEvent, TrainingJob

EVENT_PREFIX = "ftevent-"
MAX_PAGE = 100
# What a public id can be; anything else names no row and needs no query (a NUL would
# even make PostgreSQL refuse the query).
PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
DIGITS = re.compile(r"[0-9]{1,18}")


def owned_by(user: User) -> Q:
    """Rows with ``organisation`` and ``created_by`` that ``user`` may see (not for staff)."""
    return Q(organisation__memberships__user=user) | Q(organisation__isnull=True, created_by=user)


# --- Jobs


def jobs_visible_to(user: User) -> QuerySet[TrainingJob]:
    """The jobs ``user`` may see, newest first, with what a listing shows."""
    jobs = TrainingJob.objects.select_related(
        "organisation", "dataset", "validation_dataset", "trainer", "artifact"
    ).order_by("-id")
    return jobs if user.is_staff else jobs.filter(owned_by(user))


def job_get_for_user(*, user: User, public_id: str) -> TrainingJob:
    """The job with that public id if ``user`` may see it; 404 otherwise."""
    is_id = isinstance(public_id, str) and PUBLIC_ID.fullmatch(public_id)
    job = jobs_visible_to(user).filter(public_id=public_id).first() if is_id else None
    if job is None:
        raise NotFound(f"No training job '{public_id}'.", param="job_id")
    return job


def jobs_page(*, user: User, after: str | None, limit: int) -> tuple[list[TrainingJob], bool]:
    """A page of the visible jobs older than the job ``after``; and whether more follow."""
    jobs = jobs_visible_to(user)
    if after:
        anchor = job_get_for_user(user=user, public_id=after)
        jobs = jobs.filter(id__lt=anchor.pk)
    rows = list(jobs[: limit + 1])
    return rows[:limit], len(rows) > limit


def event_public_id(event: TrainingEvent) -> str:
    return f"{EVENT_PREFIX}{event.pk}"


def job_events(
    *, job: TrainingJob, after: str | None = None, limit: int = 20
) -> tuple[list[TrainingEvent], bool]:
    """The job's events newest first, older than the event ``after``; and whether more follow."""
    events = TrainingEvent.objects.filter(job=job).order_by("-id")
    if after:
        number = after.removeprefix(EVENT_PREFIX)
        if not DIGITS.fullmatch(number):
            raise InvalidRequest(
                f"after must be an event id ({EVENT_PREFIX}…).",
                param="after",
                code=ErrorCode.INVALID_VALUE,
            )
        events = events.filter(id__lt=int(number))
    rows = list(events[: limit + 1])
    return rows[:limit], len(rows) > limit


def job_log_tail(*, job: TrainingJob, lines: int = 200) -> list[TrainingEvent]:
    """The job's last ``lines`` log events, oldest first."""
    tail = TrainingEvent.objects.filter(job=job, kind="log").order_by("-id")[:lines]
    return list(reversed(tail))


def job_loss_series(*, job: TrainingJob) -> list[tuple[int, float]]:
    """(step, loss) of the job's metrics events, in order."""
    rows = TrainingEvent.objects.filter(job=job, kind="metrics").order_by("id")
    return [
        (event.step or 0, event.data["loss"])
        for event in rows.only("step", "data")
        if isinstance(event.data.get("loss"), int | float)
    ]


def page_limit(value: str | None, *, default: int = 20) -> int:
    """A ``limit`` query parameter: 1 to MAX_PAGE."""
    if value is None:
        return default
    if not DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_PAGE:
        raise InvalidRequest(
            f"limit must be an integer from 1 to {MAX_PAGE}.",
            param="limit",
            code=ErrorCode.INVALID_VALUE,
        )
    return int(value)


# --- Datasets a job names


def dataset_for_job(*, user: User, ref, param: str = "dataset") -> Dataset:
    """The dataset named by public id (``file-…``) or by name, if ``user`` may see it."""
    if not isinstance(ref, str) or not ref or "\0" in ref:
        raise InvalidRequest(
            f"{param} must be a dataset's id or name.", param=param, code=ErrorCode.INVALID_VALUE
        )
    found = dataset_find_for_user(user, ref)
    if found is None:
        raise NotFound(f"No dataset '{ref}'.", param=param)
    return found


# --- Datasets ---------------------------------------------------------------------------


def datasets_for_user(user) -> QuerySet[Dataset]:
    """The datasets ``user`` may see, newest first, without their content."""
    datasets = Dataset.objects.defer("content").select_related("organisation", "created_by")
    return datasets if user.is_staff else datasets.filter(owned_by(user))


def dataset_get_for_user(user, public_id: str, *, with_content: bool = False) -> Dataset:
    """The dataset with this id if ``user`` may see it; 404 otherwise (outsiders learn nothing)."""
    datasets = datasets_for_user(user)
    if with_content:
        datasets = datasets.defer(None).select_related("organisation", "created_by")
    is_id = isinstance(public_id, str) and PUBLIC_ID.fullmatch(public_id)
    dataset = datasets.filter(public_id=public_id).first() if is_id else None
    if dataset is None:
        raise NotFound(f"No such file: '{public_id}'.", param="file_id")
    return dataset


def dataset_find_for_user(user, ref: str) -> Dataset | None:
    """A visible dataset by id, else the newest visible one with that name (seed 004's
    ``"dataset": "my-training-data"``); None when there is none."""
    datasets = datasets_for_user(user)
    return datasets.filter(Q(public_id=ref) | Q(name=ref)).order_by("-id").first()


def dataset_may_upload_any(user) -> bool:
    """Whether ``user`` holds a role that uploads datasets (staff, or the trainer role)."""
    return user.is_staff or user.has_perm("ai.add_dataset")


def dataset_may_upload(user, organisation) -> bool:
    """Whether ``user`` may store a dataset owned by ``organisation`` (None: by themselves)."""
    if user.is_staff:
        return True
    if not dataset_may_upload_any(user):
        return False
    return organisation is None or _is_member(user, organisation.pk)


def dataset_may_change(user, dataset: Dataset) -> bool:
    """Whether ``user`` (who can see it) may delete ``dataset``."""
    if user.is_staff:
        return True
    if not user.has_perm("ai.delete_dataset"):
        return False
    if dataset.organisation_id is None:
        return dataset.created_by_id == user.pk
    return _is_member(user, dataset.organisation_id)


def _is_member(user, organisation_id: int) -> bool:
    return Membership.objects.filter(user=user, organisation_id=organisation_id).exists()
