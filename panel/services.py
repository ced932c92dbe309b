from datetime import timedelta

from auditlog.models import LogEntry
from django.conf import settings
from django.utils import timezone

from .models import Heartbeat


def heartbeat_record(*, name: str) -> Heartbeat:
    """Stamp the named process as alive now."""
    heartbeat, _ = Heartbeat.objects.update_or_create(
        name=name, defaults={"beat_at": timezone.now()}
    )
    return heartbeat


def audit_prune(*, now=None, batch_size: int = 5000) -> int:
    """Delete audit entries older than AUDIT_RETENTION_DAYS, in batches; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.AUDIT_RETENTION_DAYS)
    deleted = 0
    while True:
        ids = list(
            LogEntry.objects.filter(timestamp__lt=cutoff).values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += LogEntry.objects.filter(id__in=ids).delete()[0]
