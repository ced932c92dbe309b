"""Who may call the management API at all; each resource adds its own role checks."""

from rest_framework import exceptions, permissions

from ..models import APIKey, Permission


def acting_key(request) -> APIKey | None:
    """The API key the request authenticated with; None for a browser session."""
    return request.auth if isinstance(request.auth, APIKey) else None


class ManagementAccess(permissions.BasePermission):
    """Signed in, and an API key (if one is used) holds the ``manage`` permission.

    A browser session acts with every key permission, as on the gateway; the
    roles of its user still apply.
    """

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        key = acting_key(request)
        if key is not None and not key.has_permission(Permission.MANAGE):
            raise exceptions.PermissionDenied("This API key lacks the 'manage' permission.")
        return True


class RegistryRole(permissions.DjangoModelPermissions):
    """Staff (admin), or a user holding the model permission (the model_manager group)."""

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }
    message = "This needs the admin or model_manager role."

    def has_permission(self, request, view):
        if request.user and request.user.is_staff:
            return True
        return super().has_permission(request, view)


class RegistryRoleOrOrganisationReader(RegistryRole):
    """RegistryRole, except that anyone signed in may read: the view's queryset then holds
    only what their own organisations (as owner or admin) are given (the links)."""

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return bool(request.user and request.user.is_authenticated)
        return super().has_permission(request, view)


def reads_whole_registry(user, model) -> bool:
    """Staff, or a user holding the model's view permission (the model_manager group)."""
    return user.is_staff or user.has_perm(f"{model._meta.app_label}.view_{model._meta.model_name}")


class IsStaff(permissions.BasePermission):
    """The admin role: a staff user."""

    message = "This needs the admin role."

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_staff)
