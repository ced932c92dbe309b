from django.apps import AppConfig


class OrgsConfig(AppConfig):
    name = "orgs"
    verbose_name = "Organisations"

    def ready(self):
        from auditlog.signals import pre_log

        from .models import LedgerEntry

        pre_log.connect(ledger_entry_is_audited, sender=LedgerEntry, dispatch_uid="orgs.ledger")


def ledger_entry_is_audited(sender, instance, **kwargs) -> bool:
    """Top-ups, refunds and adjustments are audited; a usage charge is usage, not an action."""
    from .models import LedgerKind

    return instance.kind != LedgerKind.USAGE
