"""The model registry: models, the upstreams that serve them, and who may use them."""

from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from panel.fields import EncryptedTextField


class ModelKind(models.TextChoices):
    CHAT = "chat", "Chat"
    COMPLETION = "completion", "Text completion"
    EMBEDDING = "embedding", "Embedding"
    IMAGE = "image", "Image generation"


CONFIG_KEYS = {
    "context_window": int,
    "max_output_tokens": int,
    "default_temperature": (int, float),
}


class AIModel(models.Model):
    """A model clients name in ``model``; served by one or more upstreams."""

    name = models.CharField(
        max_length=200,
        unique=True,
        help_text="Public name: what clients send as `model`.",
    )
    display_name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=20, choices=ModelKind.choices, default=ModelKind.CHAT)
    tags = models.JSONField(default=list, blank=True)
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text="context_window, max_output_tokens, default_temperature.",
    )
    input_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0"), validators=[MinValueValidator(0)]
    )
    output_price_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0"), validators=[MinValueValidator(0)]
    )
    price_per_image = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0"), validators=[MinValueValidator(0)]
    )
    cached_input_price_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Input tokens read from the prompt cache; empty: the input price.",
    )
    cache_write_price_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Input tokens written to the prompt cache; empty: the input price.",
    )
    response_cache_ttl = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds an identical request is answered from the response cache; "
        "empty or 0: never cached.",
    )
    train_path = models.CharField(
        max_length=1000,
        blank=True,
        help_text="For the built-in trainer: a directory of this model's weights in Hugging "
        "Face format on the training workers' hosts; empty: the built-in trainer cannot "
        "fine-tune it.",
    )
    is_active = models.BooleanField(default=True)
    is_listed = models.BooleanField(
        default=False,
        help_text="Listed in every signed-in user's catalog (/api/ai/models); unlisted "
        "models are seen only by the tenants linked to them.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "AI model"
        ordering = ["name"]

    def __str__(self):
        return self.display_name or self.name

    def clean(self):
        errors = {}
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            errors["tags"] = "Tags must be a list of strings."
        if not isinstance(self.config, dict):
            errors["config"] = "Config must be an object."
        else:
            for key, kind in CONFIG_KEYS.items():
                value = self.config.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
                    errors["config"] = f"config.{key} must be a non-negative number."
            temperature = self.config.get("default_temperature")
            if isinstance(temperature, int | float) and temperature > 2:
                errors["config"] = "config.default_temperature must be between 0 and 2."
        if errors:
            raise ValidationError(errors)

    @property
    def max_output_tokens(self) -> int | None:
        return self.config.get("max_output_tokens") if isinstance(self.config, dict) else None


def validate_header_safe(value: str) -> None:
    """Refuse text that cannot be an HTTP header value: control characters, edge spaces."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value) or value != value.strip():
        raise ValidationError(
            "Use no control characters (line breaks, tabs…) and no leading or trailing spaces.",
            code="header_unsafe",
        )


class HealthStatus(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    UNHEALTHY = "unhealthy", "Unhealthy"
    STARTING = "starting", "Starting"
    UNKNOWN = "unknown", "Unknown"

    @classmethod
    def best_first(cls) -> tuple["HealthStatus", ...]:
        """Every status, from the best an upstream can report to the worst."""
        return (cls.HEALTHY, cls.DEGRADED, cls.STARTING, cls.UNKNOWN, cls.UNHEALTHY)

    @classmethod
    def best(cls, statuses: Iterable[str]) -> str:
        """A model's health: the best of its enabled upstreams' ``statuses``; unknown if none."""
        return min(statuses, key=cls.best_first().index, default=cls.UNKNOWN)

    @classmethod
    def is_serving(cls, status: str) -> bool:
        """Whether an upstream in ``status`` answered its last probe."""
        return status in (cls.HEALTHY, cls.DEGRADED)


class ApiStyle(models.TextChoices):
    """The protocol an upstream speaks."""

    OPENAI = "openai", "OpenAI (chat completions)"
    ANTHROPIC = "anthropic", "Anthropic (Messages)"


class Upstream(models.Model):
    """One OpenAI-compatible endpoint serving a model."""

    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="upstreams")
    # Sent in every response's x-switchboard-upstream header.
    name = models.CharField(max_length=100, validators=[validate_header_safe])
    base_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="OpenAI-compatible base URL, e.g. https://api.example.com/v1. Empty for an "
        "instance: its node and port at request time.",
    )
    instance = models.ForeignKey(
        "Instance",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="upstreams",
        help_text="A local model server: routed to only while it runs.",
    )
    api_key = EncryptedTextField(blank=True, default="")
    provider_model_id = models.CharField(
        max_length=200,
        blank=True,
        help_text="Sent upstream as `model`. Empty: the model's public name.",
    )
    priority = models.PositiveIntegerField(default=0, help_text="Lower is tried first.")
    weight = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Share of traffic among upstreams of the same priority.",
    )
    connect_timeout = models.FloatField(default=5.0, validators=[MinValueValidator(0.01)])
    first_byte_timeout = models.FloatField(default=60.0, validators=[MinValueValidator(0.01)])
    total_timeout = models.FloatField(default=600.0, validators=[MinValueValidator(0.01)])
    idle_timeout = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.01)],
        help_text="Seconds a stream may wait for its next event before it is ended.",
    )
    is_enabled = models.BooleanField(default=True)
    health_status = models.CharField(
        max_length=20, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN
    )
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    probe = models.CharField(
        max_length=20,
        default="models",
        choices=[("models", "GET /models (cheap)"), ("completion", "One-token completion")],
        help_text="How health checks probe this upstream.",
    )
    health_check_interval = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds between probes; empty: the site default."
    )
    api_style = models.CharField(
        max_length=20,
        choices=ApiStyle.choices,
        default=ApiStyle.OPENAI,
        help_text="The protocol it speaks: OpenAI's (chat completions...), or Anthropic's "
        "Messages, to which /v1/messages is passed through as sent.",
    )
    speaks_responses = models.BooleanField(
        default=False,
        help_text="It serves OpenAI's Responses API: /v1/responses is passed through to it "
        "rather than translated to a chat completion.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # What an administrator or a script edits (the admin form and the management
    # API both use these; the API key is handled apart, write-only).
    EDITABLE_FIELDS = (
        "model",
        "name",
        "base_url",
        "instance",
        "provider_model_id",
        "api_style",
        "speaks_responses",
        "priority",
        "weight",
        "connect_timeout",
        "first_byte_timeout",
        "total_timeout",
        "idle_timeout",
        "is_enabled",
        "probe",
        "health_check_interval",
    )
    HEALTH_FIELDS = ("health_status", "last_checked_at", "last_error", "consecutive_failures")

    class Meta:
        ordering = ["model", "priority", "name"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="upstream_unique_name"),
            models.CheckConstraint(condition=Q(weight__gte=1), name="upstream_weight_positive"),
        ]

    def __str__(self):
        return f"{self.model.name} / {self.name}"

    def clean(self):
        if not self.base_url and self.instance_id is None:
            raise ValidationError({"base_url": "Give a base URL, or an instance to serve it."})

    @property
    def upstream_model_id(self) -> str:
        return self.provider_model_id or self.model.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key)


class ModelLink(models.Model):
    """Grants one user or one organisation the use of a model, within limits."""

    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="links")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="model_links",
    )
    organisation = models.ForeignKey(
        "orgs.Organisation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="model_links",
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    requests_per_day = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_month = models.PositiveBigIntegerField(null=True, blank=True)
    cost_per_month = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
    )
    is_enabled = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    is_default = models.BooleanField(
        default=False, help_text="The model used when a request names none."
    )
    priority = models.PositiveSmallIntegerField(
        default=0,
        help_text="Instance scheduling: local instances last used through a higher-priority "
        "link are evicted after those of lower ones.",
    )
    is_wallet_billed = models.BooleanField(
        "billed from a wallet",
        default=False,
        help_text="Charge each request to the owner's wallet; refuse it (402) when the "
        "balance cannot cover its reservation.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    LIMIT_FIELDS = (
        "requests_per_minute",
        "tokens_per_minute",
        "requests_per_day",
        "tokens_per_day",
        "tokens_per_month",
        "cost_per_month",
    )

    class Meta:
        verbose_name = "model link"
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(organisation__isnull=True))
                | (Q(user__isnull=True) & Q(organisation__isnull=False)),
                name="modellink_exactly_one_owner",
                violation_error_message="A link belongs to exactly one user or one organisation.",
            ),
            models.UniqueConstraint(
                fields=["model", "user"],
                condition=Q(user__isnull=False),
                name="modellink_unique_user",
                violation_error_message="This user is already linked to this model.",
            ),
            models.UniqueConstraint(
                fields=["model", "organisation"],
                condition=Q(organisation__isnull=False),
                name="modellink_unique_org",
                violation_error_message="This organisation is already linked to this model.",
            ),
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(is_default=True, user__isnull=False),
                name="modellink_one_default_per_user",
                violation_error_message="This user already has a default model.",
            ),
            models.UniqueConstraint(
                fields=["organisation"],
                condition=Q(is_default=True, organisation__isnull=False),
                name="modellink_one_default_per_org",
                violation_error_message="This organisation already has a default model.",
            ),
        ]

    def __str__(self):
        return f"{self.model.name} → {self.owner}"

    @property
    def owner(self):
        return self.user or self.organisation

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def limits(self) -> dict:
        return {name: getattr(self, name) for name in self.LIMIT_FIELDS}


class HealthCheck(models.Model):
    """One probe of an upstream."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="health_checks")
    status = models.CharField(max_length=20, choices=HealthStatus.choices)
    is_success = models.BooleanField()
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    checked_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [models.Index(fields=["upstream", "-checked_at"])]

    def __str__(self):
        return f"{self.upstream} {self.status} at {self.checked_at:%H:%M:%S}"
