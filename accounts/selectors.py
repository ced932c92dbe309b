"""Reads of accounts data: on a user's behalf (the tenancy checks live here), and the API
key behind a token, uncached for the management API and as a cached snapshot for the
request path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils import timezone

from panel import conf
from panel.localcache import registry_cache
from panel.snapshot import snapshot_of

from .models import (
    APIKey,
    User,
    hash_key,
    is_well_formed_key,
    key_is_live,
)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as the request path sees it, kept in ``registry_cache``."""

    id: int
    user_id: int
    organisation_id: int | None
    permissions: frozenset[str]
    allowed_model_ids: frozenset[int]
    expires_at: datetime | None
    is_revoked: bool
    limits: dict = field(default_factory=dict)
    # The instances a per-instance key may use; None: every instance (allow_all).
    instance_ids: frozenset[int] | None = None

    def is_usable(self, now: datetime) -> bool:
        return key_is_live(self, now)

    def may_use_instance(self, instance_id: int) -> bool:
        return self.instance_ids is None or instance_id in self.instance_ids


def key_info_of(key: APIKey, *, expires_at: datetime | None = None) -> KeyInfo:
    """The snapshot of a key row; ``expires_at`` for its previous secret (a rotated key)."""
    return snapshot_of(
        KeyInfo,
        key,
        expires_at=key.expires_at if expires_at is None else expires_at,
        permissions=frozenset(key.permissions),
        allowed_model_ids=frozenset(m.pk for m in key.allowed_models.all()),
        limits={
            "requests_per_minute": key.requests_per_minute,
            "cost_per_month": key.cost_per_month,
        },
        instance_ids=key.instance_ids,
    )


def _key_by_hash(key_hash: str) -> QuerySet[APIKey]:
    """The key whose current secret, or previous one (a rotated key), hashes to ``key_hash``."""
    return APIKey.objects.filter(Q(key_hash=key_hash) | Q(previous_hash=key_hash))


def _previous_expiry(key: APIKey) -> datetime:
    """When a rotated key's previous secret stops: its grace period's end, or the key's own
    expiry when that comes first."""
    if key.expires_at is not None and key.expires_at < key.previous_expires_at:
        return key.expires_at
    return key.previous_expires_at


def _load_key(key_hash: str) -> KeyInfo | None:
    # Loaded once per cache generation: a change to the key or its instances bumps it.
    # The previous secret's snapshot carries the end of its grace period as its expiry,
    # so it stops then in every process without any invalidation.
    key = _key_by_hash(key_hash).prefetch_related("allowed_models").first()
    if key is None:
        return None
    if key.key_hash == key_hash:
        return key_info_of(key)
    if key.previous_expires_at is None:
        return None
    return key_info_of(key, expires_at=_previous_expiry(key))


async def key_info_get(key_hash: str) -> KeyInfo | None:
    # Unknown hashes are cached briefly too (in a bounded table of their own), so a flood
    # of random keys costs one query each and never pushes a real key out.
    return await registry_cache.get(("key", key_hash), _load_key, key_hash, max_age=5.0)


def _lookup_hash(plain: str) -> str | None:
    """The hash to look ``plain`` up by; None when it cannot be one of our keys (no query)."""
    return hash_key(plain) if is_well_formed_key(plain) else None


def apikey_verify(*, plain: str) -> APIKey | None:
    """The usable key matching ``plain``, or None (unknown, revoked, expired, inactive owner)."""
    key_hash = _lookup_hash(plain)
    if key_hash is None:
        return None
    key = _key_by_hash(key_hash).select_related("user").first()
    if key is None or not key.is_usable:
        return None
    if key.key_hash != key_hash and not key.matches_previous(key_hash, timezone.now()):
        return None
    return key


async def key_info_verify(*, plain: str) -> KeyInfo | None:
    """The request path's twin of ``apikey_verify``: the cached snapshot of the usable key.

    The owner is not looked at here: the gateway loads the caller's snapshot anyway and
    refuses an inactive one there ("This account is disabled.").
    """
    key_hash = _lookup_hash(plain)
    if key_hash is None:
        return None
    key = await key_info_get(key_hash)
    return key if key is not None and key.is_usable(conf.now()) else None


def apikeys_for_user(user: User, *, include_revoked: bool = False) -> QuerySet[APIKey]:
    """The live keys a user may manage (with the revoked ones if asked): their own; every
    key for staff."""
    keys = APIKey.objects.all() if include_revoked else APIKey.objects.filter(is_revoked=False)
    keys = keys.select_related("user", "organisation")
    keys = keys.prefetch_related("allowed_models", "instances")
    return keys if user.is_staff else keys.filter(user=user)


def models_usable_by(user: User) -> QuerySet:
    """The models linked to a user directly or through an organisation (for key scopes)."""
    # The model a key may be narrowed to, reached through the key's own relation:
    # accounts sits below ai and imports nothing from it.
    ai_model = APIKey._meta.get_field("allowed_models").related_model
    return ai_model.objects.filter(
        Q(links__user=user) | Q(links__organisation__memberships__user=user)
    ).distinct()


def instances_usable_by(user: User, organisation=None) -> QuerySet:
    """The instances a key of ``user`` may be limited to (optionally acting for ``organisation``).

    Operators (staff, or the instance view permission) manage every instance. Anyone else
    may use an instance that serves a model linked to them, when it belongs to no
    organisation or to one of theirs (the key's own, if it acts for one).
    """
    # Reached through the key's relation, as in models_usable_by: accounts imports no ai.
    instance = APIKey._meta.get_field("instances").related_model
    instances = instance.objects.all()
    if not (user.is_staff or user.has_perm("ai.view_instance")):
        instances = instances.filter(upstreams__model__in=models_usable_by(user))
        instances = instances.filter(
            Q(organisation__isnull=True) | Q(organisation__memberships__user=user)
        )
    if organisation is not None:
        instances = instances.filter(Q(organisation__isnull=True) | Q(organisation=organisation))
    return instances.distinct()


def users_visible_to(user: User) -> QuerySet[User]:
    """The users a caller may name as a key's owner: themself; anyone for staff."""
    return User.objects.all() if user.is_staff else User.objects.filter(pk=user.pk)
