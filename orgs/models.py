"""Organisations (tenants) and who belongs to them."""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from accounts.models import Tier


class Organisation(models.Model):
    """A tenant: models linked to it are usable by all its members."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    tier = models.CharField(max_length=20, choices=Tier.choices, default=Tier.FREE)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="organisations"
    )
    # Local model instances (ai.instances): quotas, and a reservation that keeps this
    # many of its running instances from being evicted for another tenant's.
    max_instances = models.PositiveIntegerField(
        null=True, blank=True, help_text="Instances it may own; empty: no limit."
    )
    max_running_instances = models.PositiveIntegerField(
        null=True, blank=True, help_text="Of those, how many may run at once; empty: no limit."
    )
    reserved_instances = models.PositiveIntegerField(
        default=0,
        help_text="This many of its running instances are never evicted to start another "
        "organisation's.",
    )
    # Training jobs (ai.training): at once, and training time a calendar month (UTC).
    max_training_jobs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Training jobs queued or running at once; empty: no limit."
    )
    training_minutes_per_month = models.PositiveIntegerField(
        null=True, blank=True, help_text="Training time a month (UTC), in minutes; empty: no limit."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", _("Owner")
    ADMIN = "admin", _("Admin")
    MEMBER = "member", _("Member")


class Membership(models.Model):
    """A user's role in one organisation."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organisation"], name="membership_unique_pair"),
        ]

    def __str__(self):
        return f"{self.user} in {self.organisation} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


class Invitation(models.Model):
    """An invitation to join an organisation with a role, sent by e-mail.

    Only the token's hash is stored; the plain token is in the e-mailed link alone.
    The invitee joins on accepting it (orgs.services.invitation_accept), signed in as
    any account: the address it was sent to is where the link went, not who may use it.
    """

    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"Invitation of {self.email} to {self.organisation} ({self.role})"

    def is_open(self, now) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > now


class Wallet(models.Model):
    """Credits of one organisation or one user; the balance is the sum of its ledger."""

    organisation = models.OneToOneField(
        Organisation, on_delete=models.CASCADE, null=True, blank=True, related_name="wallet"
    )
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="wallet",
    )
    balance = models.DecimalField(max_digits=16, decimal_places=6, default=0)
    held = models.DecimalField(
        max_digits=16,
        decimal_places=6,
        default=0,
        help_text="Reserved by requests in flight (database path only).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, organisation__isnull=True)
                    | models.Q(user__isnull=True, organisation__isnull=False)
                ),
                name="wallet_exactly_one_owner",
            ),
        ]

    def __str__(self):
        return f"Wallet of {self.organisation or self.user}"


class LedgerKind(models.TextChoices):
    TOPUP = "topup", _("Top-up")
    USAGE = "usage", _("Usage charge")
    REFUND = "refund", _("Refund")
    ADJUSTMENT = "adjustment", _("Adjustment")


class LedgerEntry(models.Model):
    """One signed movement of credits; never edited or deleted."""

    wallet = models.ForeignKey(Wallet, on_delete=models.CASCADE, related_name="entries")
    kind = models.CharField(max_length=20, choices=LedgerKind.choices)
    amount = models.DecimalField(max_digits=16, decimal_places=6)
    reason = models.CharField(max_length=300, blank=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.kind} {self.amount}"
