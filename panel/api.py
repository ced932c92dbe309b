"""/api/v1/config (sanitised settings, admins only) and /api/v1/version (public)."""

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.permissions import IsStaff, ManagementAccess

from . import redis as sb_redis
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
            "rollup_lookback_hours": settings.USAGE_ROLLUP_LOOKBACK_HOURS,
            "retention_days": settings.USAGE_RETENTION_DAYS,
        },
        "health": {
            "check_interval": settings.HEALTH_CHECK_INTERVAL,
            "probe_timeout": settings.HEALTH_PROBE_TIMEOUT,
            "degraded_latency_ms": settings.HEALTH_DEGRADED_LATENCY_MS,
            "retention_days": settings.HEALTH_RETENTION_DAYS,
        },
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
                "rollup_lookback_hours": serializers.IntegerField,
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
