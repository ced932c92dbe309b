"""API keys: creation, revocation, permissions and use; the first admin user."""

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel.errors import KeyRevoked

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


@transaction.atomic
def apikey_rotate(*, key: APIKey, grace_seconds: int | None = None) -> tuple[APIKey, str]:
    """Give a key a new secret, keeping its id, scope, limits and usage; return it with the
    plain new secret, which is never stored.

    The old secret keeps working for ``grace_seconds`` (API_KEY_ROTATION_GRACE_SECONDS when
    None; 0 stops it at once). Only the secret replaced last is kept: rotating again ends
    the grace period of the one before at once.
    """
    key = APIKey.objects.select_for_update().get(pk=key.pk)
    if key.is_revoked:
        raise KeyRevoked()
    if grace_seconds is None:
        grace_seconds = settings.API_KEY_ROTATION_GRACE_SECONDS
    now, plain = timezone.now(), apikey_generate()
    if grace_seconds > 0:
        key.previous_hash, key.previous_prefix = key.key_hash, key.prefix
        key.previous_expires_at = now + timedelta(seconds=grace_seconds)
    else:
        key.previous_hash, key.previous_prefix, key.previous_expires_at = None, "", None
    key.key_hash, key.prefix, key.rotated_at = hash_key(plain), plain[:PREFIX_LENGTH], now
    # A save (not an update) sends post_save, which invalidates every process's key cache.
    key.save(
        update_fields=[
            "key_hash",
            "prefix",
            "previous_hash",
            "previous_prefix",
            "previous_expires_at",
            "rotated_at",
        ]
    )
    return key, plain


def apikey_revoke(*, key: APIKey) -> APIKey:
    """Revoke a key; it stops authenticating at once."""
    key.is_revoked = True
    key.save(update_fields=["is_revoked"])
    return key


def apikey_touch(*, key: APIKey) -> None:
    """Record that the key was just used."""
    APIKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())


def user_is_operator_made(*, user: User) -> bool:
    """Whether an operator made this account rather than django-allauth: a superuser, or
    an account without the e-mail address row allauth records for every account it
    makes (sign-up) or links (SSO)."""
    if user.is_superuser:
        return True
    return (
        not EmailAddress.objects.filter(user=user).exists()
        and not SocialAccount.objects.filter(user=user).exists()
    )


@transaction.atomic
def user_email_vouch(*, user: User) -> bool:
    """Record the address an operator gave the user as verified and primary, so that
    allauth's mandatory verification, password reset and e-mail sign-in accept it.

    Returns whether it was recorded: not when the user has no address, nor when another
    account already holds it verified (ACCOUNT_UNIQUE_EMAIL).
    """
    email = (user.email or "").strip()
    if not email:
        return False
    held = EmailAddress.objects.filter(email__iexact=email, verified=True)
    if held.filter(user=user, primary=True).exists():
        return True
    if held.exclude(user=user).exists():
        return False
    EmailAddress.objects.filter(user=user, primary=True).update(primary=False)
    address = EmailAddress.objects.filter(user=user, email__iexact=email).first()
    if address is None:
        address = EmailAddress(user=user, email=email.lower())
    address.verified, address.primary = True, True
    address.save()
    return True


@transaction.atomic
def admin_ensure(*, username: str, email: str, password: str) -> tuple[User, bool]:
    """Create the superuser if missing, its address vouched for (the operator gave it);
    return it and whether it was created."""
    user = User.objects.filter(username=username).first()
    if user is not None:
        return user, False
    user = User.objects.create_superuser(username=username, email=email, password=password)
    user_email_vouch(user=user)
    return user, True


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
