"""Celery tasks: thin wrappers that call services and own their retry policy."""

from celery import shared_task
from django.conf import settings

from . import services
from .gateway import response_cache, responses_store
from .training import orphans as training_orphans
from .training import runner


@shared_task(ignore_result=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def usage_rollup_task(rebuild: bool = False) -> None:
    # ``rebuild=True`` recomputes every day from the raw events (as ``manage.py usage_rollup --rebuild``).
    services.usage_rollup(rebuild=rebuild)


@shared_task(ignore_result=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def usage_prune_task() -> None:
    services.usage_prune()


@shared_task(ignore_result=True)
def usage_reconcile_task() -> None:
    # No retry: the next beat tick reconciles again.
    services.usage_reconcile()


@shared_task(ignore_result=True)
def upstreams_check_task() -> None:
    # No retry: the next beat tick probes again.
    services.upstreams_check()


@shared_task(ignore_result=True)
def health_prune_task() -> None:
    services.health_prune()


@shared_task(ignore_result=True)
def responses_purge_task() -> None:
    # No retry: the next beat tick purges again (an expired response is never served meanwhile).
    # Expired replies of the response cache (database mode) go too.
    responses_store.responses_purge()
    response_cache.cache_purge()


@shared_task(bind=True, ignore_result=True, acks_late=True)
def training_run_task(self, job_id: int) -> None:
    # On the ``training`` queue (CELERY_TASK_ROUTES). Acknowledged when it ends, so that
    # a worker started with --prefetch-multiplier 1 holds no second job while it trains
    # (that job would wait hours behind this one while another worker idles). Never
    # retried: a redelivered task finds its job running and does nothing; a worker that
    # dies mid-job leaves it to the orphan check, which fails it.
    runner.job_run(job_id, worker=self.request.hostname or "", task_id=self.request.id or "")


@shared_task(ignore_result=True)
def training_orphans_task() -> None:
    # No retry: the next beat tick looks again.
    training_orphans.jobs_fail_orphans()


def beat_schedule() -> dict:
    """This app's entries of Celery beat's schedule (``ai.apps`` adds them)."""
    return {
        "usage-rollup": {
            "task": usage_rollup_task.name,
            "schedule": float(settings.USAGE_ROLLUP_INTERVAL),
        },
        "usage-prune": {"task": usage_prune_task.name, "schedule": 3600.0},
        "usage-reconcile": {
            "task": usage_reconcile_task.name,
            "schedule": float(settings.USAGE_RECONCILE_INTERVAL),
        },
        # Ticks often; each upstream is probed once per its own interval.
        "upstreams-check": {
            "task": upstreams_check_task.name,
            "schedule": float(settings.HEALTH_CHECK_TICK),
        },
        "health-prune": {"task": health_prune_task.name, "schedule": 3600.0},
        "responses-purge": {"task": responses_purge_task.name, "schedule": 3600.0},
        "training-orphans": {"task": training_orphans_task.name, "schedule": 60.0},
    }
