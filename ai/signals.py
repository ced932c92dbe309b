"""Cache invalidation: any change to rows the gateway caches bumps the shared generation.

Writes that send no signal (``QuerySet.update``, such as the instance agent's
status writes or the health probes') call ``bump_generation`` after them.

A wallet's balance is cached too, in Redis (``ai.gateway.ledger``): a ledger entry
written through the ORM (a top-up, refund or adjustment) changes that copy once
its transaction commits. Usage charges are inserted in bulk by the ledger itself,
which settles their copy in the same step, and send no signal.
"""

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from panel.localcache import bump_generation


def _on_change(sender, **kwargs):
    transaction.on_commit(bump_generation)


def _on_wallet_created(sender, created=False, **kwargs):
    if created:
        transaction.on_commit(bump_generation)


def _on_ledger_entry(sender, instance, created=False, **kwargs):
    from panel import redis as sb_redis

    if not created or not sb_redis.is_configured():
        return
    from orgs.services import to_micro

    from .gateway.ledger import balance_add

    wallet_id, micro = instance.wallet_id, to_micro(instance.amount)
    transaction.on_commit(lambda: balance_add(wallet_id=wallet_id, micro=micro))


def connect() -> None:
    from accounts.models import APIKey, User
    from orgs.models import LedgerEntry, Membership, Organisation
    from panel.models import SiteSettings

    from .models import AIModel, Instance, ModelLink, Node, Upstream

    # An instance's status and port decide whether (and where) its upstream is routed;
    # its node's row, where its agent and its port are reached.
    for model in (
        AIModel,
        Upstream,
        Instance,
        Node,
        ModelLink,
        APIKey,
        User,
        Membership,
        Organisation,
        SiteSettings,
    ):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"sb-cache-{model._meta.label}")
        post_delete.connect(
            _on_change, sender=model, dispatch_uid=f"sb-cache-del-{model._meta.label}"
        )
    post_save.connect(_on_ledger_entry, sender=LedgerEntry, dispatch_uid="sb-wallet-balance-copy")
    m2m_changed.connect(
        _on_change, sender=APIKey.allowed_models.through, dispatch_uid="sb-cache-key-models"
    )
    # A key's instance permissions (an instance's deletion drops its rows: post_delete above).
    m2m_changed.connect(
        _on_change, sender=APIKey.instances.through, dispatch_uid="sb-cache-key-instances"
    )
