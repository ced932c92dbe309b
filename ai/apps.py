from django.apps import AppConfig


class AiConfig(AppConfig):
    name = "ai"
    verbose_name = "AI models"

    def ready(self):
        from panel import celery

        from . import signals, tasks

        signals.connect()
        celery.schedule(tasks.beat_schedule())
