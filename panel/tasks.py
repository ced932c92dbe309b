from celery import shared_task

from . import services


@shared_task(ignore_result=True)
def heartbeat_record(*, name: str) -> None:
    services.heartbeat_record(name=name)
