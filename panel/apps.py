from django.apps import AppConfig


class PanelConfig(AppConfig):
    name = "panel"
    verbose_name = "Switchboard"

    def ready(self):
        from django.conf import settings

        from . import celery

        celery.app.conf.beat_schedule = {
            "heartbeat": {
                "task": "panel.tasks.heartbeat_record",
                "schedule": float(settings.CELERY_HEARTBEAT_INTERVAL),
                "kwargs": {"name": "beat"},
            },
            "usage-rollup": {
                "task": "ai.tasks.usage_rollup_task",
                "schedule": float(settings.USAGE_ROLLUP_INTERVAL),
            },
            "usage-prune": {"task": "ai.tasks.usage_prune_task", "schedule": 3600.0},
            "usage-reconcile": {
                "task": "ai.tasks.usage_reconcile_task",
                "schedule": float(settings.USAGE_RECONCILE_INTERVAL),
            },
            # Ticks often; each upstream is probed once per its own interval.
            "upstreams-check": {
                "task": "ai.tasks.upstreams_check_task",
                "schedule": float(settings.HEALTH_CHECK_TICK),
            },
            "health-prune": {"task": "ai.tasks.health_prune_task", "schedule": 3600.0},
        }
