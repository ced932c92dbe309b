"""Organisation services: wallets (every change of a balance is a ledger entry in the same
transaction), organisations, their memberships and e-mail invitations."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext_noop, override

from accounts.models import Tier
from panel.db import insert_many
from panel.errors import ErrorCode, InvalidRequest, NotFound, PermissionDenied

from .models import Invitation, LedgerEntry, LedgerKind, Membership, Organisation, Role, Wallet
from .selectors import can_administer, can_own, invitation_token_hash, users_addable_by

MICRO = Decimal("0.000001")


def to_micro(amount: Decimal) -> int:
    """Credits as an integer number of millionths (the gateway's one money unit)."""
    return int((Decimal(amount) / MICRO).to_integral_value())


def credits(micro: int) -> Decimal:
    """Micro-credits back as Decimal credits, exactly (for the rows that store money)."""
    return Decimal(micro) * MICRO


def wallet_for(*, user=None, organisation=None) -> Wallet:
    """The wallet of a user or an organisation, created empty on first use."""
    if (user is None) == (organisation is None):
        raise ValueError("A wallet belongs to exactly one user or one organisation.")
    wallet, _ = Wallet.objects.get_or_create(user=user, organisation=organisation)
    return wallet


def _apply(*, wallet: Wallet, kind: str, amount: Decimal, reason: str, by=None, request_id=""):
    amount = Decimal(amount).quantize(MICRO)
    with transaction.atomic():
        Wallet.objects.select_for_update().filter(pk=wallet.pk).update(
            balance=F("balance") + amount
        )
        entry = LedgerEntry.objects.create(
            wallet=wallet,
            kind=kind,
            amount=amount,
            reason=reason,
            created_by=by,
            request_id=request_id,
        )
    wallet.refresh_from_db(fields=["balance", "held"])
    return entry


def wallet_topup(*, wallet: Wallet, amount: Decimal, reason: str, by=None) -> LedgerEntry:
    """Add credits."""
    if Decimal(amount) <= 0:
        raise ValueError("A top-up must be positive.")
    return _apply(wallet=wallet, kind=LedgerKind.TOPUP, amount=amount, reason=reason, by=by)


def wallet_refund(
    *, wallet: Wallet, amount: Decimal, reason: str, by=None, request_id=""
) -> LedgerEntry:
    """Give credits back, e.g. for a failed request charged by mistake."""
    if Decimal(amount) <= 0:
        raise ValueError("A refund must be positive.")
    return _apply(
        wallet=wallet,
        kind=LedgerKind.REFUND,
        amount=amount,
        reason=reason,
        by=by,
        request_id=request_id,
    )


def wallet_adjust(*, wallet: Wallet, amount: Decimal, reason: str, by=None) -> LedgerEntry:
    """A signed correction by an administrator; needs a reason."""
    if not reason.strip():
        raise ValueError("An adjustment needs a reason.")
    return _apply(wallet=wallet, kind=LedgerKind.ADJUSTMENT, amount=amount, reason=reason, by=by)


def wallet_charges_record(charges: list[tuple[int, Decimal, str]]) -> None:
    """Ledger entries for usage charges (wallet id, cost, request id), balances updated with them.

    Runs inside the usage flush transaction, next to the UsageEvents it matches.
    """
    from collections import defaultdict

    totals: dict[int, Decimal] = defaultdict(Decimal)
    rows = []
    now = timezone.now()
    for wallet_id, cost, request_id in charges:
        totals[wallet_id] += cost
        rows.append((now, wallet_id, LedgerKind.USAGE, -cost, request_id, "usage"))
    insert_many(
        LedgerEntry, ["created_at", "wallet_id", "kind", "amount", "request_id", "reason"], rows
    )
    for wallet_id, total in totals.items():
        Wallet.objects.filter(pk=wallet_id).update(balance=F("balance") - total)


# --- Organisations and memberships ------------------------------------------------------


@transaction.atomic
def organisation_create(*, name: str, slug: str, tier: str = Tier.FREE, owner=None):
    """Create an organisation, with ``owner`` as its first owner when given."""
    organisation = Organisation(name=name, slug=slug, tier=tier)
    organisation.full_clean()
    organisation.save()
    if owner is not None:
        Membership.objects.create(user=owner, organisation=organisation, role=Role.OWNER)
    return organisation


# The refusals the organisation pages show are marked for the Vietnamese catalogue and
# translated there (orgs.views); the API answers them in English.
def _require_owner_for(*, role_change: bool, by, organisation) -> None:
    if role_change and not can_own(by, organisation):
        raise PermissionDenied(
            gettext_noop("Only an owner can grant, change or remove the owner role.")
        )


def _require_another_owner(membership) -> None:
    others = membership.organisation.memberships.filter(role=Role.OWNER).exclude(pk=membership.pk)
    if membership.role == Role.OWNER and not others.exists():
        raise InvalidRequest(
            gettext_noop("An organisation keeps at least one owner."),
            param="role",
            code=ErrorCode.LAST_OWNER,
        )


# One answer for a user who does not exist and one who belongs to other tenants only.
NO_ADDABLE_USER = (
    "No one you can add has this username or e-mail address. You can add people who "
    "already share an organisation with you; an administrator can add anyone."
)


def _addable_user(*, by, username: str | None, email: str | None):
    candidates = users_addable_by(by)
    if username is not None:
        found = list(candidates.filter(username=username)[:2])
    else:
        found = list(candidates.filter(email__iexact=email)[:2])
    param = "username" if username is not None else "email"
    if not found:
        raise InvalidRequest(NO_ADDABLE_USER, param=param, code=ErrorCode.USER_NOT_FOUND)
    if len(found) > 1:
        raise InvalidRequest(
            "Several people you can add have this e-mail address; add one by username.",
            param=param,
            code=ErrorCode.AMBIGUOUS_EMAIL,
        )
    return found[0]


def membership_add(
    *, organisation, role: str, by, username: str | None = None, email: str | None = None
):
    """Add a user, named by username or e-mail, whom ``by`` may add (``users_addable_by``).

    Only owners (or staff) may add an owner.
    """
    _require_owner_for(role_change=role == Role.OWNER, by=by, organisation=organisation)
    user = _addable_user(by=by, username=username, email=email)
    if organisation.memberships.filter(user=user).exists():
        param = "username" if username is not None else "email"
        raise InvalidRequest(
            "This user is already a member.", param=param, code=ErrorCode.ALREADY_MEMBER
        )
    return Membership.objects.create(user=user, organisation=organisation, role=role)


@transaction.atomic
def membership_role_set(*, membership, role: str, by):
    """Change a member's role; owner roles need an owner, and the last owner stays one."""
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    touches_owner = Role.OWNER in (membership.role, role)
    _require_owner_for(role_change=touches_owner, by=by, organisation=membership.organisation)
    if role != Role.OWNER:
        _require_another_owner(membership)
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, membership, by) -> None:
    """Remove a member; removing an owner needs an owner, and never the last one."""
    _require_owner_for(
        role_change=membership.role == Role.OWNER, by=by, organisation=membership.organisation
    )
    _require_another_owner(membership)
    membership.delete()


# --- Invitations ------------------------------------------------------------------------


def _english(label) -> str:
    """A choice label in English: the invitation mail is written in English, whatever
    language the inviter's page is in."""
    with override("en"):
        return str(label)


# One answer for a token that never existed, has expired, was used or was revoked.
INVALID_INVITATION = "This invitation is invalid or has expired."


def _require_administrator(*, by, organisation) -> None:
    if not can_administer(by, organisation):
        raise PermissionDenied(
            gettext_noop("Only an owner or an admin of this organisation can do this.")
        )


def invitation_create(
    *, organisation, email: str, role: str, by, absolute_uri: Callable[[str], str]
) -> tuple[Invitation, str]:
    """Invite an e-mail address with a role and send it the link; return it with its token.

    Only the token's hash is stored. The same happens whether the address has an account,
    belongs to a member already or to no one: the inviter learns nothing about it.
    ``absolute_uri`` turns the link's path into an absolute URL (the request's).
    """
    from django.urls import reverse

    _require_administrator(by=by, organisation=organisation)
    _require_owner_for(role_change=role == Role.OWNER, by=by, organisation=organisation)
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        organisation=organisation,
        email=email,
        role=role,
        token_hash=invitation_token_hash(token),
        invited_by=by,
        expires_at=timezone.now() + timedelta(days=settings.INVITATION_TTL_DAYS),
    )
    invitation.full_clean()
    invitation.save()
    link = absolute_uri(reverse("orgs:invitation", args=[token]))
    send_mail(
        # A name may hold a line break (the API takes any text); a header may not.
        subject=f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}Join {' '.join(organisation.name.split())}",
        message=(
            f"{by.get_username()} invites you to join {organisation.name} on Switchboard as "
            f"{_english(Role(role).label).lower()}.\n\nOpen this link to accept:\n{link}\n\n"
            f"It expires in {settings.INVITATION_TTL_DAYS} days. If you did not expect it, "
            "ignore this message.\n"
        ),
        from_email=None,
        recipient_list=[email],
    )
    return invitation, token


@transaction.atomic
def invitation_accept(*, token: str, user) -> Membership:
    """Join the organisation with the invitation's role; the invitation is then used.

    A user who already belongs to it keeps their membership (and role). An unknown,
    expired, used or revoked token raises the same NotFound.
    """
    invitation = (
        Invitation.objects.select_for_update()
        .select_related("organisation")
        .filter(token_hash=invitation_token_hash(token))
        .first()
    )
    now = timezone.now()
    if invitation is None or not invitation.is_open(now):
        raise NotFound(INVALID_INVITATION)
    membership, _ = Membership.objects.get_or_create(
        user=user, organisation=invitation.organisation, defaults={"role": invitation.role}
    )
    invitation.accepted_at = now
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    return membership


def invitation_revoke(*, invitation: Invitation, by) -> Invitation:
    """Revoke an open invitation: its link stops working. An owner's needs an owner."""
    organisation = invitation.organisation
    _require_administrator(by=by, organisation=organisation)
    _require_owner_for(role_change=invitation.role == Role.OWNER, by=by, organisation=organisation)
    if invitation.is_open(timezone.now()):
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
    return invitation
