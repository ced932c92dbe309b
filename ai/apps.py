from django.apps import AppConfig


class AiConfig(AppConfig):
    name = "ai"
    verbose_name = "AI models"

    def ready(self):
        from panel import celery

        from . import signals, tasks
        from .gateway import tracing

        signals.connect()
        tracing.configure()
        celery.schedule(tasks.beat_schedule())
