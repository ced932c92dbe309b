from decimal import Decimal

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils import timezone

from panel.errors import ApiError

from .models import Invitation, LedgerEntry, Membership, Organisation, Wallet
from .services import invitation_revoke, wallet_topup


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "tier", "member_count", "created_at"]
    list_filter = ["tier"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(_member_count=Count("memberships"))

    @admin.display(description="members", ordering="_member_count")
    def member_count(self, obj):
        return obj._member_count


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organisation", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "organisation"]
    search_fields = ["user__username", "user__email", "organisation__name"]
    autocomplete_fields = ["user", "organisation"]


class LedgerInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "amount", "reason", "request_id", "created_by"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class TopUpForm(forms.Form):
    amount = forms.DecimalField(min_value=Decimal("0.000001"), decimal_places=6, max_digits=16)
    reason = forms.CharField(max_length=300)


@admin.register(Wallet)
class WalletAdmin(admin.ModelAdmin):
    list_display = ["__str__", "organisation", "user", "balance", "held", "updated_at"]
    list_select_related = ["organisation", "user"]
    list_filter = [
        ("organisation", admin.EmptyFieldListFilter),
        ("user", admin.EmptyFieldListFilter),
        "updated_at",
    ]
    search_fields = ["organisation__name", "organisation__slug", "user__username", "user__email"]
    autocomplete_fields = ["organisation", "user"]
    readonly_fields = ["balance", "held", "updated_at"]
    inlines = [LedgerInline]
    actions = ["top_up"]

    def get_readonly_fields(self, request, obj=None):
        # The owner is chosen once; the balance only moves through the ledger.
        return [*self.readonly_fields, "organisation", "user"] if obj else self.readonly_fields

    @admin.action(description="Top up selected wallets")
    def top_up(self, request, queryset):
        form = TopUpForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for wallet in queryset:
                wallet_topup(
                    wallet=wallet,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    by=request.user,
                )
            self.message_user(
                request,
                f"Added {form.cleaned_data['amount']} credits to {queryset.count()} wallet(s).",
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Top up wallets",
            "form": form,
            "wallets": queryset,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/orgs/wallet/top_up.html", context)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "wallet", "kind", "amount", "reason", "request_id", "created_by"]
    list_filter = ["kind", "created_at"]
    list_select_related = ["wallet__organisation", "wallet__user", "created_by"]
    search_fields = ["request_id", "reason"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Invitations are sent from the organisation's page; here they are read and revoked.

    The token's hash is never shown.
    """

    list_display = ["email", "organisation", "role", "state", "invited_by", "expires_at"]
    list_filter = ["role"]
    list_select_related = ["organisation", "invited_by"]
    search_fields = ["email", "organisation__name", "organisation__slug"]
    fields = [
        "organisation",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="state")
    def state(self, obj):
        if obj.accepted_at:
            return "accepted"
        if obj.revoked_at:
            return "revoked"
        return "expired" if obj.expires_at <= timezone.now() else "open"

    @admin.action(description="Revoke selected invitations")
    def revoke(self, request, queryset):
        revoked = 0
        for invitation in queryset.select_related("organisation"):
            try:
                invitation_revoke(invitation=invitation, by=request.user)
            except ApiError as error:
                self.message_user(request, f"{invitation}: {error.message}", level="error")
            else:
                revoked += 1
        self.message_user(request, f"Revoked {revoked} invitation(s).")
