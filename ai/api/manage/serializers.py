"""Registry serializers. Upstream credentials are write-only: only ``has_api_key`` shows."""

from copy import copy

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orgs.models import Organisation
from panel.serializers import KnownFieldsOnly, StrictFloatField

from ...models import AIModel, HealthStatus, ModelLink, Upstream
from ...selectors.health import upstream_health


def drf_detail(exc: DjangoValidationError) -> dict | list:
    """A Django ValidationError as DRF error detail, field names kept."""
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if name == NON_FIELD_ERRORS else name): messages
            for name, messages in exc.message_dict.items()
        }
    return exc.messages


class ModelCleanMixin:
    """Validates through the model's ``full_clean``: its ``clean()`` and its constraints."""

    clean_exclude: tuple[str, ...] = ()

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = copy(self.instance) if self.instance is not None else self.Meta.model()
        for name, value in attrs.items():
            if name not in self.clean_exclude:
                setattr(instance, name, value)
        try:
            instance.full_clean(exclude=self.clean_exclude)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(drf_detail(exc)) from exc
        return attrs


class ModelConfigSerializer(KnownFieldsOnly, serializers.Serializer):
    """A model's configuration (seed 004's config): every key optional."""

    context_window = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    max_output_tokens = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    default_temperature = serializers.FloatField(
        min_value=0, max_value=2, required=False, allow_null=True
    )

    def to_internal_value(self, data):
        values = super().to_internal_value(data)
        return {name: value for name, value in values.items() if value is not None}


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false`` only: no ``"yes"``, ``1`` or ``"on"``."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class UpstreamSerializer(KnownFieldsOnly, ModelCleanMixin, serializers.ModelSerializer):
    speaks_responses = StrictBooleanField(
        required=False, help_text="It serves /v1/responses natively (passed through)."
    )
    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        max_length=4000,
        style={"input_type": "password"},
        help_text="Write-only: stored encrypted, never returned. Empty clears it.",
    )
    has_api_key = serializers.BooleanField(read_only=True)
    connect_timeout = StrictFloatField(min_value=0.01, required=False, help_text="Seconds.")
    first_byte_timeout = StrictFloatField(
        min_value=0.01,
        required=False,
        help_text="Seconds until the answer starts (a stream: its first event); then the next upstream is tried.",
    )
    idle_timeout = StrictFloatField(
        min_value=0.01,
        required=False,
        help_text="Seconds a stream may wait for its next event; then it ends with an error event.",
    )
    total_timeout = StrictFloatField(min_value=0.01, required=False, help_text="Seconds.")

    class Meta:
        model = Upstream
        fields = [
            "id",
            *Upstream.EDITABLE_FIELDS,
            "api_key",
            "has_api_key",
            *Upstream.HEALTH_FIELDS,
            "created_at",
            "updated_at",
        ]
        read_only_fields = [*Upstream.HEALTH_FIELDS, "created_at", "updated_at"]
        # The model's constraints are checked by full_clean (ModelCleanMixin).
        validators = []


class DeployUpstreamSerializer(UpstreamSerializer):
    """An upstream deployed with its model: the model is the one being created."""

    clean_exclude = ("model",)

    class Meta(UpstreamSerializer.Meta):
        fields = [f for f in UpstreamSerializer.Meta.fields if f != "model"]


class UpstreamSummarySerializer(serializers.ModelSerializer):
    has_api_key = serializers.BooleanField(read_only=True)

    class Meta:
        model = Upstream
        fields = [
            "id",
            "name",
            "base_url",
            "priority",
            "weight",
            "is_enabled",
            "health_status",
            "has_api_key",
        ]
        read_only_fields = fields


class AIModelSerializer(KnownFieldsOnly, ModelCleanMixin, serializers.ModelSerializer):
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=50
    )
    config = ModelConfigSerializer(required=False)
    status = serializers.SerializerMethodField()
    upstreams = UpstreamSummarySerializer(many=True, read_only=True)

    class Meta:
        model = AIModel
        fields = [
            "id",
            "name",
            "display_name",
            "kind",
            "tags",
            "config",
            "input_price_per_million",
            "cached_input_price_per_million",
            "cache_write_price_per_million",
            "output_price_per_million",
            "price_per_image",
            "response_cache_ttl",
            "is_active",
            "is_listed",
            "status",
            "upstreams",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        validators = []

    @extend_schema_field(serializers.ChoiceField([s.value for s in HealthStatus.best_first()]))
    def get_status(self, model) -> str:
        """The best health of the model's enabled upstreams."""
        return HealthStatus.best(upstream_health(u) for u in model.upstreams.all() if u.is_enabled)

    def update(self, instance, validated_data):
        for name, value in validated_data.items():
            setattr(instance, name, value)
        instance.save()
        return instance


class ModelDeploySerializer(AIModelSerializer):
    """A new model and the upstreams that serve it (seed 004's deploy)."""

    clean_exclude = ("upstreams",)
    upstreams = DeployUpstreamSerializer(many=True, allow_empty=False, max_length=20)

    def validate_upstreams(self, upstreams):
        names = [u["name"] for u in upstreams]
        if len(names) != len(set(names)):
            raise serializers.ValidationError("Upstream names must be unique within a model.")
        return upstreams


class ArtifactDeploySerializer(KnownFieldsOnly, serializers.Serializer):
    """A trained artifact served as a model (issue 16): by its id or its job's."""

    artifact = serializers.CharField(max_length=40, required=False, help_text="ftart-…")
    job = serializers.CharField(max_length=40, required=False, help_text="ftjob-…")
    name = serializers.CharField(
        max_length=200, required=False, help_text="The model's name; default: the artifact's."
    )
    organisation = serializers.SlugField(
        required=False, help_text="Link it to this organisation, not the job's."
    )

    def validate(self, attrs):
        if ("artifact" in attrs) == ("job" in attrs):
            raise serializers.ValidationError({"artifact": "Give either artifact or job."})
        return attrs


class ModelLinkSerializer(KnownFieldsOnly, ModelCleanMixin, serializers.ModelSerializer):
    organisation = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Organisation.objects.all(),
        required=False,
        allow_null=True,
        help_text="An organisation's slug; give either this or `user`.",
    )

    class Meta:
        model = ModelLink
        fields = [
            "id",
            "model",
            "user",
            "organisation",
            *ModelLink.LIMIT_FIELDS,
            "is_enabled",
            "expires_at",
            "is_default",
            "is_wallet_billed",
            "created_at",
        ]
        read_only_fields = ["created_at"]
        extra_kwargs = {"user": {"help_text": "A user's id; give either this or `organisation`."}}
        validators = []

    def validate(self, attrs):
        user = attrs.get("user", getattr(self.instance, "user", None))
        organisation = attrs.get("organisation", getattr(self.instance, "organisation", None))
        if (user is None) == (organisation is None):
            raise serializers.ValidationError(
                {"organisation": "A link belongs to exactly one user or one organisation."}
            )
        return super().validate(attrs)
