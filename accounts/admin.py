from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.template.response import TemplateResponse

from .models import APIKey, Permission, User
from .services import apikey_create, apikey_revoke


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


class APIKeyAddForm(forms.ModelForm):
    permissions = forms.MultipleChoiceField(
        choices=Permission.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[Permission.READ, Permission.PROXY],
    )

    class Meta:
        model = APIKey
        fields = ["user", "organisation", "name", "permissions", "allowed_models", "expires_at"]

    def clean(self):
        cleaned = super().clean()
        user, org = cleaned.get("user"), cleaned.get("organisation")
        if user and org and not org.memberships.filter(user=user).exists():
            self.add_error("organisation", "The key's owner is not a member of this organisation.")
        return cleaned


class APIKeyChangeForm(forms.ModelForm):
    permissions = forms.MultipleChoiceField(
        choices=Permission.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = APIKey
        fields = ["name", "permissions", "allowed_models", "expires_at", "is_revoked"]


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "user",
        "organisation",
        "permission_list",
        "expires_at",
        "last_used_at",
        "is_revoked",
    ]
    list_filter = ["is_revoked", "created_at"]
    list_select_related = ["user", "organisation"]
    search_fields = ["name", "prefix", "user__username", "user__email", "organisation__name"]
    autocomplete_fields = ["user", "organisation"]
    filter_horizontal = ["allowed_models"]
    readonly_fields = ["user", "organisation", "prefix", "last_used_at", "created_at"]
    actions = ["revoke_keys"]

    def get_form(self, request, obj=None, **kwargs):
        kwargs["form"] = APIKeyChangeForm if obj else APIKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_fields(self, request, obj=None):
        if obj is None:
            return APIKeyAddForm.Meta.fields
        return ["user", "organisation", "prefix", *APIKeyChangeForm.Meta.fields, "last_used_at"]

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
            expires_at=form.cleaned_data.get("expires_at"),
        )
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        obj._state.adding = False
        request._created_plain_key = plain

    def save_related(self, request, form, formsets, change):
        # apikey_create already stored allowed_models for a new key.
        if change:
            super().save_related(request, form, formsets, change)

    def response_add(self, request, obj, post_url_continue=None):
        """Show the plain key once, in this response only: it is never stored or redirected."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": APIKey.objects.get(pk=obj.pk),
            "plain_key": request._created_plain_key,
            "title": "API key created",
        }
        response = TemplateResponse(request, "admin/accounts/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        for key in queryset:
            apikey_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
