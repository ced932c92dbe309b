"""Celery tasks: thin wrappers that call services and own their retry policy."""

from celery import shared_task

from . import services


@shared_task(ignore_result=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def usage_rollup_task() -> None:
    services.usage_rollup()


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
