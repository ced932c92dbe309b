import threading

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Prefetch, Subquery

from .admin_columns import (
    STATUS_CSS,
    RecentUsageColumns,
    breaker_badge,
    health_badge,
    status_badge,
)
from .gateway import router
from .instances import admin as instances_admin  # noqa: F401  (registers the Instances page)
from .instances import node_admin  # noqa: F401  (registers the Nodes page)
from .models import (
    AIModel,
    HealthCheck,
    HealthStatus,
    ModelLink,
    Upstream,
    UsageEvent,
    UsageRollup,
)
from .selectors.health import upstream_health
from .selectors.recent_usage import recent_usage_annotations
from .services import upstreams_check
from .training import admin as training_admin  # noqa: F401  (registers the Training pages)
from .training import dataset_admin  # noqa: F401  (registers the Datasets page)


class UpstreamForm(forms.ModelForm):
    """The upstream API key is write-only: never rendered back, kept when left blank."""

    new_api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)

    class Meta:
        model = Upstream
        fields = list(Upstream.EDITABLE_FIELDS)

    def save(self, commit=True):
        upstream = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            upstream.api_key = ""
        elif self.cleaned_data.get("new_api_key"):
            upstream.api_key = self.cleaned_data["new_api_key"]
        if commit:
            upstream.save()
            self.save_m2m()
        return upstream


class UpstreamInline(admin.StackedInline):
    model = Upstream
    form = UpstreamForm
    extra = 0
    fields = [
        ("name", "base_url", "instance"),
        ("provider_model_id", "priority", "weight", "is_enabled"),
        ("new_api_key", "clear_api_key", "key_status"),
        ("connect_timeout", "first_byte_timeout", "idle_timeout", "total_timeout"),
        ("health", "last_checked_at", "consecutive_failures"),
    ]
    readonly_fields = ["key_status", "health", "last_checked_at", "consecutive_failures"]
    raw_id_fields = ["instance"]

    @admin.display(description="stored key")
    def key_status(self, obj):
        return "set" if obj.pk and obj.has_api_key else "none"

    @admin.display(description="health")
    def health(self, obj):
        return health_badge(obj.health_status) if obj.pk else "-"


class ModelLinkInline(admin.TabularInline):
    model = ModelLink
    extra = 0
    autocomplete_fields = ["user", "organisation"]
    fields = [
        "user",
        "organisation",
        "is_default",
        "is_enabled",
        "expires_at",
        *ModelLink.LIMIT_FIELDS,
    ]


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "health",
        "upstreams_up",
        "display_name",
        "kind",
        "is_active",
        "is_listed",
        "link_count",
        "input_price_per_million",
        "output_price_per_million",
    ]
    list_filter = ["kind", "is_active", "is_listed"]
    list_editable = ["is_listed"]
    search_fields = ["name", "display_name"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "display_name",
                    "kind",
                    "is_active",
                    "is_listed",
                    "tags",
                    "config",
                ]
            },
        ),
        (
            "Pricing (credits)",
            {
                "fields": [
                    "input_price_per_million",
                    "cached_input_price_per_million",
                    "cache_write_price_per_million",
                    "output_price_per_million",
                    "price_per_image",
                ]
            },
        ),
        ("Response cache", {"fields": ["response_cache_ttl"]}),
    ]
    inlines = [UpstreamInline, ModelLinkInline]

    class Media:
        css = STATUS_CSS

    def get_queryset(self, request):
        upstreams = Upstream.objects.select_related("instance")
        return (
            super()
            .get_queryset(request)
            .annotate(
                _upstreams=Count("upstreams", distinct=True), _links=Count("links", distinct=True)
            )
            .prefetch_related(Prefetch("upstreams", queryset=upstreams))
        )

    @staticmethod
    def _enabled_health(obj) -> list[str]:
        return [upstream_health(u) for u in obj.upstreams.all() if u.is_enabled]

    @admin.display(description="health")
    def health(self, obj):
        """The best health of the enabled upstreams, as the catalogue and the API report it."""
        return health_badge(HealthStatus.best(self._enabled_health(obj)))

    @admin.display(description="upstreams up", ordering="_upstreams")
    def upstreams_up(self, obj):
        """Enabled upstreams that answered their last probe / all the model's upstreams."""
        up = sum(HealthStatus.is_serving(status) for status in self._enabled_health(obj))
        return f"{up}/{obj._upstreams}"

    @admin.display(description="upstreams", ordering="_upstreams")
    def upstream_count(self, obj):
        return obj._upstreams

    @admin.display(description="links", ordering="_links")
    def link_count(self, obj):
        return obj._links


class HealthCheckInline(admin.TabularInline):
    model = HealthCheck
    extra = 0
    max_num = 0
    can_delete = False
    fields = ["checked_at", "status", "is_success", "latency_ms", "error"]
    readonly_fields = fields
    verbose_name_plural = "recent health checks"

    def get_queryset(self, request):
        # The newest twenty; the full history is in the Health checks list.
        queryset = super().get_queryset(request)
        ids = list(queryset.order_by("-checked_at").values_list("id", flat=True)[:20])
        return queryset.filter(id__in=ids)


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows the system writes (checks, usage): listed and opened, never added or edited here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(HealthCheck)
class HealthCheckAdmin(ViewOnlyAdmin):
    list_display = ["checked_at", "upstream", "status", "is_success", "latency_ms", "error"]
    list_filter = ["status", "is_success"]
    list_select_related = ["upstream__model"]
    search_fields = ["upstream__name", "upstream__model__name", "error"]
    date_hierarchy = "checked_at"


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    inlines = [HealthCheckInline]
    actions = ["check_now", "close_breaker"]
    # What an operator looks for first (health, breaker) before the wide columns.
    list_display = [
        "name",
        "model",
        "health",
        "breaker",
        "latency",
        "last_checked_at",
        "is_enabled",
        "priority",
        "weight",
        "base_url",
        "instance",
        "last_error_short",
    ]
    list_filter = ["is_enabled", "health_status", "model"]
    list_select_related = ["model", "instance"]
    search_fields = ["name", "base_url", "model__name", "provider_model_id"]
    autocomplete_fields = ["model", "instance"]
    readonly_fields = [
        "key_status",
        "health_status",
        "last_checked_at",
        "last_error",
        "consecutive_failures",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "model",
                    "name",
                    "base_url",
                    "instance",
                    "provider_model_id",
                    "api_style",
                    "speaks_responses",
                    "is_enabled",
                ]
            },
        ),
        ("Credentials", {"fields": ["key_status", "new_api_key", "clear_api_key"]}),
        ("Routing", {"fields": ["priority", "weight"]}),
        (
            "Timeouts (seconds)",
            {"fields": ["connect_timeout", "first_byte_timeout", "idle_timeout", "total_timeout"]},
        ),
        (
            "Health",
            {
                "fields": [
                    "probe",
                    "health_check_interval",
                    "health_status",
                    "last_checked_at",
                    "last_error",
                    "consecutive_failures",
                ]
            },
        ),
    ]

    class Media:
        css = STATUS_CSS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The breaker state (shared, or this process's), read once per list page by the
        # thread rendering it.
        self._page = threading.local()

    def get_queryset(self, request):
        last_check = HealthCheck.objects.filter(upstream=OuterRef("pk")).order_by("-checked_at")
        return (
            super()
            .get_queryset(request)
            .annotate(_latency_ms=Subquery(last_check.values("latency_ms")[:1]))
        )

    def changelist_view(self, request, extra_context=None):
        states = router.breakers_read()
        self._page.breakers = states
        context = {
            "breaker_scope": states.scope if states else None,
            "breakers_per_process": bool(states) and states.scope == router.SCOPE_PROCESS,
            **(extra_context or {}),
        }
        try:
            response = super().changelist_view(request, context)
            if hasattr(response, "render"):
                response.render()
            return response
        finally:
            self._page.breakers = None

    @admin.display(description="stored key")
    def key_status(self, obj):
        return "set" if obj and obj.has_api_key else "none"

    @admin.display(description="health", ordering="health_status")
    def health(self, obj):
        return health_badge(upstream_health(obj))

    @admin.display(description="latency")
    def latency(self, obj):
        """The last probe's latency."""
        value = getattr(obj, "_latency_ms", None)
        return "-" if value is None else f"{value} ms"

    @admin.display(description="breaker")
    def breaker(self, obj):
        """The breaker as the gateway sees it: shared (Redis), else in this process."""
        states = getattr(self._page, "breakers", None)
        if states is None:
            return status_badge("unknown", "?", "unknown (Redis unreachable)")
        health = upstream_health(obj)
        probed_ok = obj.last_checked_at and HealthStatus.is_serving(health)
        state = router.breaker_state(
            states.open_until.get(obj.pk),
            probed_ok_at=obj.last_checked_at.timestamp() if probed_ok else None,
        )
        count = states.failures.get(obj.pk, 0)
        return breaker_badge(state, f"{count} failure{'s' if count != 1 else ''}" if count else "")

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.action(description="Check now")
    def check_now(self, request, queryset):
        """Probe the selected upstreams now, through the health service (as the task does)."""
        upstreams = list(queryset.select_related("model", "instance"))
        checks = upstreams_check(upstreams=upstreams)
        for check in checks:
            detail = f"{check.latency_ms} ms" if check.is_success else check.error
            level = messages.SUCCESS if check.is_success else messages.WARNING
            self.message_user(request, f"{check.upstream}: {check.status} ({detail})", level)
        checked = {check.upstream_id for check in checks}
        for upstream in upstreams:
            if upstream.pk not in checked:
                self.message_user(
                    request,
                    f"{upstream}: not checked, its instance is not running.",
                    messages.WARNING,
                )

    @admin.action(description="Close breaker")
    def close_breaker(self, request, queryset):
        """Close the selected upstreams' breakers where the gateway keeps them."""
        upstreams = list(queryset.select_related("model"))
        names = ", ".join(str(u) for u in upstreams)
        scope = router.breakers_close(upstreams)
        if scope is None:
            self.message_user(
                request,
                "Redis is unreachable: the breakers were not closed. Try again later.",
                messages.ERROR,
            )
        elif scope == router.SCOPE_SHARED:
            message = f"Closed the breaker of {names} for every gateway process."
            self.message_user(request, message, messages.SUCCESS)
        else:
            message = (
                f"Closed the breaker of {names} in this process (without Redis each web "
                "process keeps its own; under make run it is the gateway's)."
            )
            self.message_user(request, message, messages.SUCCESS)


@admin.register(ModelLink)
class ModelLinkAdmin(RecentUsageColumns, admin.ModelAdmin):
    list_display = [
        "model",
        "user",
        "organisation",
        "is_default",
        "is_enabled",
        "expires_at",
        "requests_per_minute",
        "tokens_per_day",
        "cost_per_month",
        "recent_requests",
        "recent_cost",
    ]
    list_filter = ["is_enabled", "is_default", "model"]
    list_select_related = ["model", "user", "organisation"]
    search_fields = ["model__name", "user__username", "user__email", "organisation__name"]
    autocomplete_fields = ["model", "user", "organisation"]
    fieldsets = [
        (
            None,
            {"fields": ["model", "user", "organisation", "is_default", "is_enabled", "expires_at"]},
        ),
        ("Limits (empty = unlimited)", {"fields": list(ModelLink.LIMIT_FIELDS)}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**recent_usage_annotations("link_id"))


@admin.register(UsageEvent)
class UsageEventAdmin(ViewOnlyAdmin):
    list_display = [
        "created_at",
        "request_id",
        "route",
        "model_name",
        "user",
        "organisation",
        "status",
        "prompt_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "cost",
        "latency_ms",
    ]
    list_filter = ["status", "route", "is_stream", "is_estimated", "model"]
    list_select_related = ["model", "user", "organisation"]
    search_fields = ["request_id", "model_name", "user__username", "organisation__name"]
    date_hierarchy = "created_at"


@admin.register(UsageRollup)
class UsageRollupAdmin(ViewOnlyAdmin):
    list_display = [
        "period",
        "bucket_start",
        "model_id",
        "user_id",
        "organisation_id",
        "requests",
        "errors",
        "prompt_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "cost",
    ]
    list_filter = ["period"]
    # Rollups keep plain ids (they outlive the rows): searched by exact id.
    search_fields = ["=model_id", "=link_id", "=user_id", "=organisation_id", "=api_key_id"]
    date_hierarchy = "bucket_start"
