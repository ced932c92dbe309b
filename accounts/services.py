"""API keys: creation, revocation, permissions and use; the first admin user."""

import secrets
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from .models import APIKey, Permission, PermissionMode, User, hash_key

SECRET_BYTES = 32
PREFIX_LENGTH = 12


def apikey_generate() -> str:
    """A new plain key: 'sb-' and 32 random bytes, url-safe."""
    return APIKey.PREFIX + secrets.token_urlsafe(SECRET_BYTES)


@transaction.atomic
def apikey_create(
    *,
    user,
    name: str,
    permissions: Iterable[str] = (Permission.READ, Permission.PROXY),
    organisation=None,
    allowed_models: Iterable = (),
    permission_mode: str = PermissionMode.ALLOW_ALL,
    instances: Iterable = (),
    expires_at: datetime | None = None,
) -> tuple[APIKey, str]:
    """Create a key and return it with its plain text, which is never stored.

    ``instances`` are those a per-instance key may use (the caller checked them).
    """
    plain = apikey_generate()
    key = APIKey(
        user=user,
        organisation=organisation,
        name=name,
        prefix=plain[:PREFIX_LENGTH],
        key_hash=hash_key(plain),
        permissions=sorted(set(permissions)),
        permission_mode=permission_mode,
        expires_at=expires_at,
    )
    key.full_clean()
    key.save()
    allowed = list(allowed_models)
    if allowed:
        key.allowed_models.set(allowed)
    chosen = list(instances)
    if chosen:
        key.instances.set(chosen)
    return key, plain


def apikey_revoke(*, key: APIKey) -> APIKey:
    """Revoke a key; it stops authenticating at once."""
    key.is_revoked = True
    key.save(update_fields=["is_revoked"])
    return key


def apikey_touch(*, key: APIKey) -> None:
    """Record that the key was just used."""
    APIKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())


def admin_ensure(*, username: str, email: str, password: str) -> tuple[User, bool]:
    """Create the superuser if missing; return it and whether it was created."""
    user = User.objects.filter(username=username).first()
    if user is not None:
        return user, False
    return User.objects.create_superuser(username=username, email=email, password=password), True


@transaction.atomic
def apikey_permissions_set(
    *,
    key: APIKey,
    permissions: Iterable[str],
    allowed_models: Iterable | None = None,
    permission_mode: str | None = None,
    instances: Iterable | None = None,
) -> APIKey:
    """Replace a key's permissions and, when given, the models it is limited to and its
    permission mode with the instances it may use (none with allow_all)."""
    key.permissions = sorted(set(permissions))
    fields = ["permissions"]
    if permission_mode is not None:
        key.permission_mode = permission_mode
        fields.append("permission_mode")
    key.full_clean()
    key.save(update_fields=fields)
    if allowed_models is not None:
        key.allowed_models.set(list(allowed_models))
    if instances is not None:
        key.instances.set(list(instances))
    return key
