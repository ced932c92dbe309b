"""Reads of accounts data on a user's behalf: the tenancy checks live here."""

from django.db.models import Q, QuerySet

from .models import APIKey, User


def apikeys_for_user(user: User) -> QuerySet[APIKey]:
    """The live keys a user may manage: their own; every key for staff."""
    keys = APIKey.objects.filter(is_revoked=False).select_related("user", "organisation")
    keys = keys.prefetch_related("allowed_models")
    return keys if user.is_staff else keys.filter(user=user)


def models_usable_by(user: User) -> QuerySet:
    """The models linked to a user directly or through an organisation (for key scopes)."""
    from ai.models import AIModel

    return AIModel.objects.filter(
        Q(links__user=user) | Q(links__organisation__memberships__user=user)
    ).distinct()


def users_visible_to(user: User) -> QuerySet[User]:
    """The users a caller may name as a key's owner: themself; anyone for staff."""
    return User.objects.all() if user.is_staff else User.objects.filter(pk=user.pk)
