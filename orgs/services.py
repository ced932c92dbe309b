"""Organisation services: wallets (every change of a balance is a ledger entry in the same
transaction), organisations and their memberships."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Tier
from panel.db import insert_many
from panel.errors import ErrorCode, InvalidRequest, PermissionDenied

from .models import LedgerEntry, LedgerKind, Membership, Organisation, Role, Wallet
from .selectors import can_own, users_addable_by

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


def _require_owner_for(*, role_change: bool, by, organisation) -> None:
    if role_change and not can_own(by, organisation):
        raise PermissionDenied("Only an owner can grant, change or remove the owner role.")


def _require_another_owner(membership) -> None:
    others = membership.organisation.memberships.filter(role=Role.OWNER).exclude(pk=membership.pk)
    if membership.role == Role.OWNER and not others.exists():
        raise InvalidRequest(
            "An organisation keeps at least one owner.", param="role", code=ErrorCode.LAST_OWNER
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
