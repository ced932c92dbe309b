"""The orphan check (beat: ``ai.tasks.training_orphans_task``): running jobs whose
worker is gone are failed, since no runner will ever end them."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..models import TrainingEvent, TrainingEventKind, TrainingJob, TrainingStatus

logger = logging.getLogger("switchboard.training")

# --- Orphans (beat: ai.tasks.training_orphans_task) -----------------------------------------
# A running job's runner writes its heartbeat every TRAINING_HEARTBEAT_INTERVAL seconds. One
# whose heartbeat is older than TRAINING_ORPHAN_AFTER lost its worker (killed, host down):
# no runner will ever end it, so this does. It kills nothing: the worker, which alone held
# the trainer's process, is gone (a Python trainer dies of the broken pipe at its next line).

ORPHAN_ERROR = "the worker running it stopped answering (no heartbeat for {seconds:g} seconds)"


def jobs_fail_orphans() -> int:
    """Fail the running jobs whose worker stopped answering; how many."""
    cutoff = timezone.now() - dt.timedelta(seconds=settings.TRAINING_ORPHAN_AFTER)
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    ids = list(
        TrainingJob.objects.filter(stale, status=TrainingStatus.RUNNING).values_list(
            "id", flat=True
        )
    )
    return sum(_job_fail_orphan(job_id, stale) for job_id in ids)


def _job_fail_orphan(job_id: int, stale: Q) -> bool:
    error = ORPHAN_ERROR.format(seconds=settings.TRAINING_ORPHAN_AFTER)
    now = timezone.now()
    with transaction.atomic():
        # Still running and still stale: a runner that came back meanwhile keeps its job.
        failed = TrainingJob.objects.filter(stale, pk=job_id, status=TrainingStatus.RUNNING)
        if not failed.update(
            status=TrainingStatus.FAILED, error=error, finished_at=now, updated_at=now
        ):
            return False
        TrainingEvent.objects.create(
            job_id=job_id,
            kind=TrainingEventKind.STATUS,
            level="error",
            message=error,
            data={"status": TrainingStatus.FAILED},
        )
    logger.warning("training job %s failed: %s", job_id, error)
    return True
