from allauth.account.decorators import secure_admin_login
from auditlog.admin import LogEntryAdmin
from auditlog.filters import CIDFilter, ResourceTypeFilter
from auditlog.models import LogEntry
from django.contrib import admin

from .models import Heartbeat, SiteSettings

admin.site.site_header = "Switchboard"
admin.site.site_title = "Switchboard admin"
admin.site.index_title = "Models, tenants and keys"
# The admin signs in through django-allauth's page, so that its rate limits and the
# second factor (MFA) apply there too: /admin/login/ sends a visitor to LOGIN_URL.
admin.site.login = secure_admin_login(admin.site.login)


@admin.register(SiteSettings)
class SiteSettingsAdmin(admin.ModelAdmin):
    list_display = ["__str__", "is_ai_enabled", "allow_signup", "updated_at"]
    list_editable = ["is_ai_enabled", "allow_signup"]
    list_display_links = ["__str__"]

    def has_add_permission(self, request):
        return not SiteSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        SiteSettings.load()
        return super().changelist_view(request, extra_context)


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "beat_at"]
    search_fields = ["name"]
    readonly_fields = ["name", "beat_at"]

    def has_add_permission(self, request):
        return False


# django-auditlog's page, with the actor and the date among its filters, and where an
# entry came from (address, route, API key) on its detail page.
admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditEntryAdmin(LogEntryAdmin):
    list_filter = [
        "action",
        ResourceTypeFilter,
        ("actor", admin.RelatedOnlyFieldListFilter),
        "timestamp",
        CIDFilter,
    ]
    readonly_fields = [*LogEntryAdmin.readonly_fields, "remote_addr", "additional_data"]
    fieldsets = [
        *LogEntryAdmin.fieldsets,
        ("Where from", {"fields": ["remote_addr", "additional_data"]}),
    ]
