from django.apps import AppConfig


class AiConfig(AppConfig):
    name = "ai"
    verbose_name = "AI models"

    def ready(self):
        from . import signals

        signals.connect()
