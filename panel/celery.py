"""The Celery app: reads CELERY_* settings, finds tasks in every installed app, and holds
beat's schedule, to which each app adds its own entries (``schedule``)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

app = Celery("switchboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def schedule(entries: dict) -> None:
    """Adds entries to beat's schedule; each app adds its own from its ``ready()``."""
    app.conf.beat_schedule = {**app.conf.beat_schedule, **entries}
