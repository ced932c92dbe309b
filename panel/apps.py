from django.apps import AppConfig
from django.db.models.signals import post_migrate


def name_the_site(sender, using="default", apps=None, **kwargs) -> None:
    """The site's name in allauth's mails and pages is "Switchboard", not the
    "example.com" django.contrib.sites makes (after every migrate and test flush; sites
    comes first in INSTALLED_APPS, so its row exists by now). A name an operator set in
    the admin is kept. A partial migrate (`migrate ai 0011`) that has not reached sites
    yet has no Site in its state: nothing to name."""
    from django.apps import apps as installed

    try:
        Site = (apps or installed).get_model("sites", "Site")
    except LookupError:
        return
    Site.objects.using(using).filter(pk=1, name="example.com").update(
        name="Switchboard", domain="localhost"
    )


class PanelConfig(AppConfig):
    name = "panel"
    verbose_name = "Switchboard"

    def ready(self):
        from django.conf import settings

        from . import audit, celery

        audit.connect()
        post_migrate.connect(name_the_site, sender=self)

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
