"""/api/v1/config (sanitised settings, admins only), /api/v1/version (public) and
/api/v1/audit-events (the audit log, admins only)."""

from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import generics, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.permissions import IsStaff, ManagementAccess
from ai.instances.procs import parse_port_range

from . import redis as sb_redis
from .db import MAX_ID
from .models import SiteSettings
from .views import version


def config_snapshot() -> dict:
    """Settings an operator may want to check from a script: switches and numbers, no secrets.

    Built from an allow-list, so a new secret setting can never leak here by default.
    """
    broker = settings.CELERY_BROKER_URL.split("://", 1)[0]
    return {
        "version": version(),
        "debug": settings.DEBUG,
        "is_ai_enabled": SiteSettings.load().is_ai_enabled,
        "database": connection.vendor,
        "redis": sb_redis.is_configured(),
        "celery_broker": broker,
        "metrics_enabled": bool(settings.METRICS_TOKEN),
        "serve_static": settings.SERVE_STATIC,
        "data_upload_max_memory_size": settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
        "gateway": {
            "breaker_threshold": settings.GATEWAY_BREAKER_THRESHOLD,
            "breaker_cooldown": settings.GATEWAY_BREAKER_COOLDOWN,
            "usage_flush_interval": settings.GATEWAY_USAGE_FLUSH_INTERVAL,
            "default_max_output_tokens": settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS,
        },
        "usage": {
            "rollup_interval": settings.USAGE_ROLLUP_INTERVAL,
            "rollup_safety_seconds": settings.USAGE_ROLLUP_SAFETY_SECONDS,
            "retention_days": settings.USAGE_RETENTION_DAYS,
        },
        "health": {
            "check_interval": settings.HEALTH_CHECK_INTERVAL,
            "probe_timeout": settings.HEALTH_PROBE_TIMEOUT,
            "degraded_latency_ms": settings.HEALTH_DEGRADED_LATENCY_MS,
            "retention_days": settings.HEALTH_RETENTION_DAYS,
        },
        "instances": _instances(),
    }


def _instances() -> dict:
    # Seed 003's config.InstancesConfig names where they apply. Left out: the agent's
    # key, its URL and this host's address (found at /api/v1/nodes by those who may),
    # and the log directory: no path of the host is shown here.
    ports = parse_port_range(settings.INSTANCE_PORT_RANGE)
    return {
        "node": settings.INSTANCE_NODE,
        "max_instances": settings.INSTANCE_MAX_INSTANCES,
        "max_running_instances": settings.INSTANCE_MAX_RUNNING,
        "on_demand_start_timeout": settings.INSTANCE_ON_DEMAND_START_TIMEOUT,
        "port_range": [ports.start, ports.stop - 1],
        "timeout_check_interval": settings.INSTANCE_TIMEOUT_CHECK_INTERVAL,
        "poll_interval": settings.INSTANCE_POLL_INTERVAL,
        "start_queue": settings.INSTANCE_START_QUEUE,
        "min_residency": settings.INSTANCE_MIN_RESIDENCY,
        "activity_interval": settings.INSTANCE_ACTIVITY_INTERVAL,
        "stop_grace": settings.INSTANCE_STOP_GRACE,
        "log_max_bytes": settings.INSTANCE_LOG_MAX_BYTES,
        "log_backups": settings.INSTANCE_LOG_BACKUPS,
    }


def _numbers(name: str, fields: dict) -> serializers.Serializer:
    return inline_serializer(name, {key: field() for key, field in fields.items()})


ConfigSchema = inline_serializer(
    "SiteConfig",
    {
        "version": serializers.CharField(),
        "debug": serializers.BooleanField(),
        "is_ai_enabled": serializers.BooleanField(),
        "database": serializers.CharField(),
        "redis": serializers.BooleanField(),
        "celery_broker": serializers.CharField(),
        "metrics_enabled": serializers.BooleanField(),
        "serve_static": serializers.BooleanField(),
        "data_upload_max_memory_size": serializers.IntegerField(),
        "gateway": _numbers(
            "GatewayConfig",
            {
                "breaker_threshold": serializers.IntegerField,
                "breaker_cooldown": serializers.FloatField,
                "usage_flush_interval": serializers.FloatField,
                "default_max_output_tokens": serializers.IntegerField,
            },
        ),
        "usage": _numbers(
            "UsageConfig",
            {
                "rollup_interval": serializers.IntegerField,
                "rollup_safety_seconds": serializers.IntegerField,
                "retention_days": serializers.IntegerField,
            },
        ),
        "health": _numbers(
            "HealthConfig",
            {
                "check_interval": serializers.IntegerField,
                "probe_timeout": serializers.FloatField,
                "degraded_latency_ms": serializers.IntegerField,
                "retention_days": serializers.IntegerField,
            },
        ),
        "instances": inline_serializer(
            "InstancesConfig",
            {
                "node": serializers.CharField(help_text="This host's node (INSTANCE_NODE)."),
                "max_instances": serializers.IntegerField(help_text="0: no limit."),
                "max_running_instances": serializers.IntegerField(
                    help_text="Per node, unless its Node row says otherwise; 0: no limit."
                ),
                "on_demand_start_timeout": serializers.FloatField(help_text="Seconds."),
                "port_range": serializers.ListField(
                    child=serializers.IntegerField(),
                    min_length=2,
                    max_length=2,
                    help_text="[first, last] port given to instances that name none.",
                ),
                "timeout_check_interval": serializers.FloatField(
                    help_text="Seconds between idle checks (llamactl counts minutes)."
                ),
                "poll_interval": serializers.FloatField(help_text="Seconds."),
                "start_queue": serializers.IntegerField(),
                "min_residency": serializers.FloatField(help_text="Seconds."),
                "activity_interval": serializers.FloatField(help_text="Seconds."),
                "stop_grace": serializers.FloatField(help_text="Seconds."),
                "log_max_bytes": serializers.IntegerField(),
                "log_backups": serializers.IntegerField(),
            },
        ),
    },
)


class ConfigView(APIView):
    """The running configuration, sanitised: no secrets, URLs or credentials."""

    permission_classes = [ManagementAccess, IsStaff]

    @extend_schema(tags=["Site"], responses=ConfigSchema)
    def get(self, request):
        return Response(config_snapshot())


class VersionView(APIView):
    """The running Switchboard version."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["Site"],
        responses=inline_serializer("Version", {"version": serializers.CharField()}),
    )
    def get(self, request):
        return Response({"version": version()})


ACTIONS = {
    "create": LogEntry.Action.CREATE,
    "update": LogEntry.Action.UPDATE,
    "delete": LogEntry.Action.DELETE,
}
ACTION_NAMES = {value: name for name, value in ACTIONS.items()}


class AuditEventFilter(filters.FilterSet):
    actor = filters.NumberFilter(field_name="actor_id", min_value=1, max_value=MAX_ID)
    model = filters.CharFilter(method="filter_model", help_text="app_label.model: ai.upstream")
    object_id = filters.CharFilter(field_name="object_pk")
    action = filters.ChoiceFilter(choices=[(name, name) for name in ACTIONS], method="by_action")
    since = filters.IsoDateTimeFilter(field_name="timestamp", lookup_expr="gte")
    until = filters.IsoDateTimeFilter(field_name="timestamp", lookup_expr="lt")

    class Meta:
        model = LogEntry
        fields = ["actor", "model", "object_id", "action", "since", "until"]

    def filter_model(self, queryset, name, value):
        app_label, _, model = value.lower().partition(".")
        content_type = ContentType.objects.filter(app_label=app_label, model=model).first()
        if content_type is None:
            raise ValidationError({"model": ["Unknown model; use app_label.model (ai.upstream)."]})
        return queryset.filter(content_type=content_type)

    def by_action(self, queryset, name, value):
        return queryset.filter(action=ACTIONS[value])


class AuditEventSerializer(serializers.ModelSerializer):
    action = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    object_id = serializers.CharField(source="object_pk")
    actor = serializers.SerializerMethodField()
    changes = serializers.JSONField(source="changes_dict")

    class Meta:
        model = LogEntry
        fields = [
            "id",
            "timestamp",
            "action",
            "model",
            "object_id",
            "object_repr",
            "changes",
            "actor",
            "remote_addr",
            "additional_data",
        ]

    def get_action(self, entry) -> str:
        return ACTION_NAMES.get(entry.action, str(entry.action))

    def get_model(self, entry) -> str:
        return f"{entry.content_type.app_label}.{entry.content_type.model}"

    @extend_schema_field(
        inline_serializer(
            "AuditActor", {"id": serializers.IntegerField(), "username": serializers.CharField()}
        )
    )
    def get_actor(self, entry) -> dict | None:
        if entry.actor is None:
            return None
        return {"id": entry.actor.pk, "username": entry.actor.get_username()}


@extend_schema(tags=["Site"])
class AuditEventList(generics.ListAPIView):
    """The audit log, newest first: who created, changed or deleted what, when, from where."""

    permission_classes = [ManagementAccess, IsStaff]
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    ordering_fields = ["timestamp", "id"]
    ordering = ["-timestamp", "-id"]
    queryset = LogEntry.objects.select_related("actor", "content_type")
