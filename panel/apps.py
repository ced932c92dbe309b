from django.apps import AppConfig


class PanelConfig(AppConfig):
    name = "panel"
    verbose_name = "Switchboard"

    def ready(self):
        from django.conf import settings

        from . import audit, celery

        audit.connect()

        celery.schedule(
            {
                "heartbeat": {
                    "task": "panel.tasks.heartbeat_record",
                    "schedule": float(settings.CELERY_HEARTBEAT_INTERVAL),
                    "kwargs": {"name": "beat"},
                },
                "audit-prune": {"task": "panel.tasks.audit_prune_task", "schedule": 3600.0},
            }
        )
