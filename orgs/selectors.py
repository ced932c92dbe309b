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


def memberships_of(organisation: Organisation) -> QuerySet[Membership]:
    return organisation.memberships.select_related("user").order_by("created_at", "id")
