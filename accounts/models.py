"""Users (with their portal tier) and API keys."""

import hashlib
import re

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Tier(models.TextChoices):
    FREE = "free", _("Free")
    PAID = "paid", _("Paid")
    ENTERPRISE = "enterprise", _("Enterprise")


TIER_RANK = {Tier.FREE: 0, Tier.PAID: 1, Tier.ENTERPRISE: 2}


class User(AbstractUser):
    """A person who signs in to the panel; the tier gates paid features."""

    tier = models.CharField(max_length=20, choices=Tier.choices, default=Tier.FREE)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


class Permission(models.TextChoices):
    READ = "read", _("Read (list models, usage)")
    PROXY = "proxy", _("Proxy (call models)")
    MANAGE = "manage", _("Manage (management API)")


# What apikey_generate issues: "sb-" and token_urlsafe(32), 43 url-safe characters.
KEY_FORMAT = re.compile(r"sb-[A-Za-z0-9_-]{43}")


def is_well_formed_key(plain: str) -> bool:
    """Whether ``plain`` could be one of our keys; anything else needs no lookup to refuse."""
    return KEY_FORMAT.fullmatch(plain) is not None


def hash_key(plain: str) -> str:
    """SHA-256 of the whole key.

    The secret part is 32 random bytes, so a fast hash is as safe as a slow one
    here and keeps verification cheap on the request path.
    """
    return hashlib.sha256(plain.encode()).hexdigest()


def key_is_live(key, now) -> bool:
    """Whether ``key`` (an APIKey or a snapshot of one) is neither revoked nor expired at ``now``."""
    return not key.is_revoked and (key.expires_at is None or key.expires_at > now)


class PermissionMode(models.TextChoices):
    ALLOW_ALL = "allow_all", "Every instance"
    PER_INSTANCE = "per_instance", "Only the instances listed"


class APIKey(models.Model):
    """A bearer key: only its hash and a visible prefix are stored."""

    PREFIX = "sb-"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    organisation = models.ForeignKey(
        "orgs.Organisation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="Optional: the key acts for this organisation of its owner.",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    permissions = models.JSONField(default=list, blank=True)
    allowed_models = models.ManyToManyField(
        "ai.AIModel",
        blank=True,
        related_name="+",
        help_text="Empty: every model the owner may use.",
    )
    # Seed 003: which local instances the key may use (the instance routes and the
    # models they serve).
    permission_mode = models.CharField(
        max_length=20, choices=PermissionMode.choices, default=PermissionMode.ALLOW_ALL
    )
    instances = models.ManyToManyField(
        "ai.Instance",
        blank=True,
        related_name="api_keys",
        help_text="With per-instance permissions: the instances this key may use.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Optional limit on this key; empty = none."
    )
    cost_per_month = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Optional monthly spend limit on this key (credits); empty = none.",
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Key rotation: the secret replaced last keeps working until previous_expires_at.
    previous_prefix = models.CharField(max_length=16, blank=True, editable=False)
    previous_hash = models.CharField(
        max_length=64, null=True, blank=True, unique=True, editable=False
    )
    previous_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    is_revoked = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    def clean(self):
        from django.core.exceptions import ValidationError

        unknown = set(self.permissions or []) - set(Permission.values)
        if unknown:
            raise ValidationError({"permissions": f"Unknown permissions: {sorted(unknown)}"})

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return key_is_live(self, timezone.now()) and self.user.is_active

    def matches_previous(self, key_hash: str, now) -> bool:
        """Whether ``key_hash`` is the secret replaced last and its grace period still runs."""
        return (
            self.previous_hash == key_hash
            and self.previous_expires_at is not None
            and self.previous_expires_at > now
        )

    @property
    def permission_labels(self) -> list[str]:
        """The key's permissions as people read them (translated), in stored order."""
        labels = dict(Permission.choices)
        return [labels.get(permission, permission) for permission in self.permissions]

    def has_permission(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def instance_ids(self) -> frozenset[int] | None:
        """The instances a per-instance key may use; None: every one (allow_all)."""
        if self.permission_mode == PermissionMode.ALLOW_ALL:
            return None
        return frozenset(instance.pk for instance in self.instances.all())

    def may_use_instance(self, instance_id: int) -> bool:
        ids = self.instance_ids
        return ids is None or instance_id in ids
