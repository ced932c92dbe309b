from allauth.mfa import admin as mfa_admin
from allauth.mfa.models import Authenticator
from allauth.socialaccount import admin as socialaccount_admin
from allauth.socialaccount.models import SocialApp, SocialToken
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from ai.admin_columns import RecentUsageColumns
from ai.selectors.recent_usage import recent_usage_annotations
from panel.errors import KeyRevoked

from .models import APIKey, Permission, PermissionMode, User
from .selectors import instances_usable_by
from .services import apikey_create, apikey_revoke, apikey_rotate, user_email_vouch

# The session entries that carry a new or rotated key's plain secret to the one page that
# shows it (POST-redirect-GET: popped as shown, so a reload shows nothing and creates nothing).
ROTATED_SESSION_KEY = "sb_rotated_api_key"
CREATED_SESSION_KEY = "sb_created_api_key"


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "tier", "is_staff", "is_active", "date_joined"]
    list_filter = ["tier", "is_staff", "is_superuser", "is_active"]
    fieldsets = [
        *BaseUserAdmin.fieldsets,
        ("Portal", {"fields": ["tier"]}),
    ]
    add_fieldsets = [
        *BaseUserAdmin.add_fieldsets,
        ("Portal", {"fields": ["email", "tier"]}),
    ]

    def save_model(self, request, obj, form, change):
        # The address an administrator gives is vouched for: no confirmation mail.
        super().save_model(request, obj, form, change)
        if "email" in form.changed_data:
            user_email_vouch(user=obj)


class InstancePermissionsForm(forms.ModelForm):
    """The permission mode and the instances of a per-instance key, checked against what
    the key's owner may use (as the API checks them)."""

    permission_mode = forms.ChoiceField(
        choices=PermissionMode.choices,
        initial=PermissionMode.ALLOW_ALL,
        required=False,
        help_text="Per-instance keys reach models only through the instances chosen below.",
    )

    def clean_permission_mode(self):
        return self.cleaned_data.get("permission_mode") or PermissionMode.ALLOW_ALL

    def clean(self):
        cleaned = super().clean()
        mode, instances = cleaned.get("permission_mode"), list(cleaned.get("instances") or ())
        if mode == PermissionMode.ALLOW_ALL and instances:
            self.add_error("instances", "Instances are only for per-instance keys.")
        elif mode == PermissionMode.PER_INSTANCE and not instances:
            self.add_error("instances", "A per-instance key needs at least one instance.")
        owner, org = self.key_owner(cleaned)
        if owner is not None and instances:
            usable = set(instances_usable_by(owner, org).values_list("pk", flat=True))
            refused = [i.name for i in instances if i.pk not in usable]
            if refused:
                self.add_error("instances", f"The key's owner may not use: {', '.join(refused)}.")
        return cleaned

    def key_owner(self, cleaned):
        return self.instance.user, self.instance.organisation


class APIKeyAddForm(InstancePermissionsForm):
    permissions = forms.MultipleChoiceField(
        choices=Permission.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[Permission.READ, Permission.PROXY],
    )

    class Meta:
        model = APIKey
        fields = [
            "user",
            "organisation",
            "name",
            "permissions",
            "allowed_models",
            "permission_mode",
            "instances",
            "expires_at",
        ]

    def clean(self):
        cleaned = super().clean()
        user, org = cleaned.get("user"), cleaned.get("organisation")
        if user and org and not org.memberships.filter(user=user).exists():
            self.add_error("organisation", "The key's owner is not a member of this organisation.")
        return cleaned

    def key_owner(self, cleaned):
        return cleaned.get("user"), cleaned.get("organisation")


class APIKeyChangeForm(InstancePermissionsForm):
    permissions = forms.MultipleChoiceField(
        choices=Permission.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = APIKey
        fields = [
            "name",
            "permissions",
            "allowed_models",
            "permission_mode",
            "instances",
            "expires_at",
            "is_revoked",
        ]


class RotateForm(forms.Form):
    grace_seconds = forms.IntegerField(
        min_value=0,
        max_value=30 * 24 * 3600,
        help_text="Seconds the old secret keeps working (0: it stops at once).",
    )


@admin.register(APIKey)
class APIKeyAdmin(RecentUsageColumns, admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "user",
        "organisation",
        "permission_list",
        "permission_mode",
        "expires_at",
        "last_used_at",
        "recent_requests",
        "recent_cost",
        "is_revoked",
    ]
    list_filter = ["is_revoked", "created_at"]
    list_select_related = ["user", "organisation"]
    search_fields = ["name", "prefix", "user__username", "user__email", "organisation__name"]
    autocomplete_fields = ["user", "organisation"]
    filter_horizontal = ["allowed_models", "instances"]
    readonly_fields = [
        "user",
        "organisation",
        "prefix",
        "last_used_at",
        "rotated_at",
        "previous_prefix",
        "previous_expires_at",
        "created_at",
    ]
    actions = ["revoke_keys"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**recent_usage_annotations("api_key_id"))

    def get_form(self, request, obj=None, **kwargs):
        kwargs["form"] = APIKeyChangeForm if obj else APIKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_fields(self, request, obj=None):
        if obj is None:
            return APIKeyAddForm.Meta.fields
        return [
            "user",
            "organisation",
            "prefix",
            *APIKeyChangeForm.Meta.fields,
            "last_used_at",
            "rotated_at",
            "previous_prefix",
            "previous_expires_at",
        ]

    @admin.display(description="permissions")
    def permission_list(self, obj):
        return ", ".join(obj.permissions)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, plain = apikey_create(
            user=form.cleaned_data["user"],
            organisation=form.cleaned_data.get("organisation"),
            name=form.cleaned_data["name"],
            permissions=form.cleaned_data["permissions"],
            allowed_models=form.cleaned_data.get("allowed_models") or (),
            permission_mode=form.cleaned_data["permission_mode"],
            instances=form.cleaned_data.get("instances") or (),
            expires_at=form.cleaned_data.get("expires_at"),
        )
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        obj._state.adding = False
        request._created_plain_key = plain

    def save_related(self, request, form, formsets, change):
        # apikey_create already stored allowed_models and instances for a new key.
        if change:
            super().save_related(request, form, formsets, change)

    def response_add(self, request, obj, post_url_continue=None):
        """Keep the plain key for the next page only, and redirect to it."""
        request.session[CREATED_SESSION_KEY] = {"id": obj.pk, "key": request._created_plain_key}
        return redirect(reverse("admin:accounts_apikey_created", args=[obj.pk]))

    def created_view(self, request, key_id: int):
        """The new key's plain secret, shown once: the session entry goes as it is read."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        key = get_object_or_404(APIKey.objects.select_related("user"), pk=key_id)
        shown = request.session.pop(CREATED_SESSION_KEY, None)
        if not shown or shown.get("id") != key.pk:
            self.message_user(request, "A new key's secret is shown only once.", messages.WARNING)
            return redirect(reverse("admin:accounts_apikey_change", args=[key.pk]))
        context = {**self._context(request, key, "API key created"), "plain_key": shown["key"]}
        response = TemplateResponse(request, "admin/accounts/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        for key in queryset:
            apikey_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")

    def get_urls(self):
        own = [
            path(
                "<int:key_id>/created/",
                self.admin_site.admin_view(self.created_view),
                name="accounts_apikey_created",
            ),
            path(
                "<int:key_id>/rotate/",
                self.admin_site.admin_view(self.rotate_view),
                name="accounts_apikey_rotate",
            ),
            path(
                "<int:key_id>/rotated/",
                self.admin_site.admin_view(self.rotated_view),
                name="accounts_apikey_rotated",
            ),
        ]
        return own + super().get_urls()

    def _changeable_key(self, request, key_id: int) -> APIKey:
        key = get_object_or_404(APIKey.objects.select_related("user"), pk=key_id)
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        return key

    def rotate_view(self, request, key_id: int):
        """GET: the form; POST: rotate, keep the plain key for the next page, redirect."""
        key = self._changeable_key(request, key_id)
        initial = {"grace_seconds": settings.API_KEY_ROTATION_GRACE_SECONDS}
        form = RotateForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                key, plain = apikey_rotate(key=key, **form.cleaned_data)
            except KeyRevoked as error:
                self.message_user(request, error.message, messages.ERROR)
                return redirect(reverse("admin:accounts_apikey_change", args=[key.pk]))
            request.session[ROTATED_SESSION_KEY] = {"id": key.pk, "key": plain}
            return redirect(reverse("admin:accounts_apikey_rotated", args=[key.pk]))
        context = {**self._context(request, key, "Rotate API key"), "form": form}
        return TemplateResponse(request, "admin/accounts/apikey/rotate.html", context)

    def rotated_view(self, request, key_id: int):
        """The rotated key's plain secret, shown once: the session entry goes as it is read."""
        key = self._changeable_key(request, key_id)
        shown = request.session.pop(ROTATED_SESSION_KEY, None)
        if not shown or shown.get("id") != key.pk:
            self.message_user(
                request, "A rotated key's secret is shown only once.", messages.WARNING
            )
            return redirect(reverse("admin:accounts_apikey_change", args=[key.pk]))
        context = {**self._context(request, key, "API key rotated"), "plain_key": shown["key"]}
        response = TemplateResponse(request, "admin/accounts/apikey/rotated.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def _context(self, request, key, title: str) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": key,
            "title": title,
        }


class SocialAppForm(socialaccount_admin.SocialAppForm):
    """allauth's provider form with a write-only client secret: left empty, it is kept."""

    secret = forms.CharField(
        label="Client secret",
        required=False,
        max_length=191,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Never shown again once saved. Leave empty to keep the stored secret.",
    )

    def clean_secret(self) -> str:
        return self.cleaned_data["secret"] or (self.instance.secret if self.instance.pk else "")

    def clean_provider_id(self) -> str:
        """A provider id names one app: two (here or in OIDC_PROVIDERS) would fail sign-in."""
        provider_id = self.cleaned_data["provider_id"]
        if not provider_id:
            return provider_id
        configured = settings.SOCIALACCOUNT_PROVIDERS.get("openid_connect", {}).get("APPS", [])
        others = SocialApp.objects.filter(provider_id=provider_id).exclude(pk=self.instance.pk)
        if others.exists() or any(app["provider_id"] == provider_id for app in configured):
            raise forms.ValidationError("Another provider already has this provider ID.")
        return provider_id


# allauth registers its own page (with the secret in a plain text input): replaced by one
# that never renders the secret back. Its admin module is imported above, so it is
# registered by now whatever the apps' order.
admin.site.unregister(SocialApp)


@admin.register(SocialApp)
class SocialAppAdmin(socialaccount_admin.SocialAppAdmin):
    form = SocialAppForm
    list_display = ["name", "provider", "provider_id", "client_id"]
    list_filter = ["provider"]
    search_fields = ["name", "provider_id", "client_id"]


# allauth's token page lists the first 40 characters of each access token and edits the
# token and its secret in plain inputs: replaced by one that never shows them.
admin.site.unregister(SocialToken)


@admin.register(SocialToken)
class SocialTokenAdmin(socialaccount_admin.SocialTokenAdmin):
    list_display = ["app", "account", "expires_at"]
    search_fields = ["account__user__username", "account__user__email", "account__uid"]
    exclude = ["token", "token_secret"]


# allauth's authenticator page has filters but no search.
admin.site.unregister(Authenticator)


@admin.register(Authenticator)
class AuthenticatorAdmin(mfa_admin.AuthenticatorAdmin):
    search_fields = ["user__username", "user__email"]
    exclude = ["data"]  # the TOTP secret and recovery codes seed
