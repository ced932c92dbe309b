"""Reads of organisations on a user's behalf: the tenancy checks live here, once."""

from django.db.models import QuerySet

from .models import Membership, Organisation, Role


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
