"""Reads of organisations on a user's behalf: the tenancy checks live here, once."""

import hashlib
from datetime import timedelta

from django.db.models import QuerySet, Sum
from django.utils import timezone

from .models import Invitation, Membership, Organisation, Role


def organisations_for_user(user) -> QuerySet[Organisation]:
    """The organisations a user may see: those they belong to; all of them for staff."""
    orgs = Organisation.objects.all()
    return orgs if user.is_staff else orgs.filter(memberships__user=user).distinct()


def organisation_role(user, organisation: Organisation) -> str | None:
    """The user's role in the organisation, or None when they do not belong to it."""
    return (
        Membership.objects.filter(user=user, organisation=organisation)
        .values_list("role", flat=True)
        .first()
    )


def can_administer(user, organisation: Organisation) -> bool:
    """Staff, or an owner or admin of this organisation."""
    return user.is_staff or organisation_role(user, organisation) in (Role.OWNER, Role.ADMIN)


def organisations_administered_by(user) -> QuerySet[Organisation]:
    """The organisations ``user`` is an owner or admin of (staff: not all of them)."""
    return Organisation.objects.filter(
        memberships__user=user, memberships__role__in=[Role.OWNER, Role.ADMIN]
    )


def can_own(user, organisation: Organisation) -> bool:
    """Staff, or an owner of this organisation (owner-only acts: deletion, owner roles)."""
    return user.is_staff or organisation_role(user, organisation) == Role.OWNER


def users_addable_by(user) -> QuerySet:
    """The users ``user`` may add to an organisation they run: anyone for staff; otherwise
    only people who already share an organisation with them, so that adding a member
    never tells whether another tenant's user exists."""
    from accounts.models import User

    if user.is_staff:
        return User.objects.all()
    shared = Membership.objects.filter(organisation__memberships__user=user)
    return User.objects.filter(pk__in=shared.values("user_id"))


def memberships_of(organisation: Organisation) -> QuerySet[Membership]:
    return organisation.memberships.select_related("user").order_by("created_at", "id")


def memberships_for_user(user) -> QuerySet[Membership]:
    """The user's own memberships, with their organisations."""
    return user.memberships.select_related("organisation").order_by("organisation__name")


def invitation_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# No real token is this long; longer input is not hashed (nor looked up) at all.
MAX_TOKEN_LENGTH = 128


def invitation_open_by_token(token: str) -> Invitation | None:
    """The open invitation with this plain token, or None (unknown, expired, used, revoked)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    invitation = (
        Invitation.objects.select_related("organisation")
        .filter(token_hash=invitation_token_hash(token))
        .first()
    )
    return invitation if invitation is not None and invitation.is_open(timezone.now()) else None


def invitations_pending(organisation: Organisation) -> QuerySet[Invitation]:
    now = timezone.now()
    return organisation.invitations.filter(
        accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
    ).select_related("invited_by")


def organisation_links(organisation: Organisation):
    from ai.models import ModelLink

    return ModelLink.objects.filter(organisation=organisation).select_related("model")


def organisation_keys(organisation: Organisation):
    from accounts.models import APIKey

    return APIKey.objects.filter(organisation=organisation).select_related("user")


def organisation_usage_by_day(organisation: Organisation, *, days: int = 30) -> list[dict]:
    """Daily rollups of the last ``days`` days, per model, newest first, with model names."""
    from ai.models import AIModel, RollupPeriod, UsageRollup

    since = timezone.now() - timedelta(days=days)
    rows = list(
        UsageRollup.objects.filter(
            period=RollupPeriod.DAY, organisation_id=organisation.pk, bucket_start__gte=since
        )
        .values("bucket_start", "model_id")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost"),
        )
        .order_by("-bucket_start", "model_id")
    )
    names = dict(
        AIModel.objects.filter(pk__in={row["model_id"] for row in rows}).values_list("pk", "name")
    )
    for row in rows:
        row["model"] = names.get(row["model_id"], f"#{row['model_id']}")
    return rows


def organisation_wallet(organisation: Organisation):
    """The organisation's wallet and its latest ledger entries, or (None, [])."""
    from .models import Wallet

    wallet = Wallet.objects.filter(organisation=organisation).first()
    if wallet is None:
        return None, []
    return wallet, list(wallet.entries.select_related("created_by")[:50])
