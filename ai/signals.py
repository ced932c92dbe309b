"""Cache invalidation: any change to rows the gateway caches bumps the shared generation."""

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from panel.localcache import bump_generation


def _on_change(sender, **kwargs):
    transaction.on_commit(bump_generation)


def _on_wallet_created(sender, created=False, **kwargs):
    if created:
        transaction.on_commit(bump_generation)


def connect() -> None:
    from accounts.models import APIKey, User
    from orgs.models import Membership, Organisation
    from panel.models import SiteSettings

    from .models import AIModel, ModelLink, Upstream

    for model in (
        AIModel,
        Upstream,
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
    m2m_changed.connect(
        _on_change, sender=APIKey.allowed_models.through, dispatch_uid="sb-cache-key-models"
    )
