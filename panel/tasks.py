from celery import shared_task

from . import services


@shared_task(ignore_result=True)
def heartbeat_record(*, name: str) -> None:
    services.heartbeat_record(name=name)


@shared_task(ignore_result=True)
def audit_prune_task() -> None:
    services.audit_prune()
