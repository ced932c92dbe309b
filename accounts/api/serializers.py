"""API keys in seed 003's shape (llamactl): never a hash; the plain key only once."""

from datetime import UTC, datetime

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orgs.models import Organisation
from panel.db import MAX_ID
from panel.serializers import KnownFieldsOnly, StrictIntegerField

from ..models import APIKey, Permission, PermissionMode
from ..selectors import instances_usable_by, models_usable_by, users_visible_to

MAX_INSTANCES = 100
MAX_GRACE_SECONDS = 30 * 24 * 3600


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


class KeyInstanceSerializer(serializers.Serializer):
    """Seed 003's KeyPermissionResponse: an instance a per-instance key may use."""

    instance_id = serializers.IntegerField(source="pk")
    instance_name = serializers.CharField(source="name")


class KeySerializer(serializers.ModelSerializer):
    """Seed 003's KeyResponse, plus the visible prefix and the key's scope."""

    user_id = serializers.IntegerField(read_only=True)
    organisation = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    permissions = serializers.ListField(child=serializers.ChoiceField(Permission.choices))
    permission_mode = serializers.ChoiceField(PermissionMode.choices, read_only=True)
    allowed_models = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    instance_ids = serializers.PrimaryKeyRelatedField(
        source="instances",
        many=True,
        read_only=True,
        help_text="With permission_mode per_instance: the instances the key may use.",
    )
    created_at = serializers.SerializerMethodField()
    expires_at = serializers.SerializerMethodField()
    last_used_at = serializers.SerializerMethodField()
    rotated_at = serializers.SerializerMethodField()
    previous_prefix = serializers.CharField(
        read_only=True, help_text="The prefix of the secret replaced at the last rotation."
    )
    previous_expires_at = serializers.SerializerMethodField(
        help_text="Unix time the previous secret stops working; null: it works no more."
    )

    class Meta:
        model = APIKey
        fields = [
            "id",
            "name",
            "prefix",
            "user_id",
            "organisation",
            "permissions",
            "permission_mode",
            "instance_ids",
            "allowed_models",
            "created_at",
            "expires_at",
            "last_used_at",
            "rotated_at",
            "previous_prefix",
            "previous_expires_at",
        ]

    @extend_schema_field(OpenApiTypes.INT)
    def get_created_at(self, key) -> int:
        return unix(key.created_at)

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_expires_at(self, key):
        return unix(key.expires_at)

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_last_used_at(self, key):
        return unix(key.last_used_at)

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_rotated_at(self, key):
        return unix(key.rotated_at)

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_previous_expires_at(self, key):
        live = key.previous_expires_at and key.previous_expires_at > datetime.now(tz=UTC)
        return unix(key.previous_expires_at) if live else None


class KeyCreatedSerializer(KeySerializer):
    """Seed 003's CreateKeyResponse: the key with its plain text, shown this once."""

    key = serializers.CharField(read_only=True, help_text="The plain key; it is never shown again.")

    class Meta(KeySerializer.Meta):
        fields = [*KeySerializer.Meta.fields, "key"]


def instance_ids_field(**kwargs) -> serializers.ListField:
    return serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=MAX_ID),
        max_length=MAX_INSTANCES,
        help_text="With permission_mode per_instance (at least one): the instances the key "
        "may use, among those its owner may use.",
        **kwargs,
    )


class KeyScopeMixin:
    """Checks a key's organisation, models and instances against what its owner may use."""

    def check_models(self, owner, ids):
        found = {m.pk: m for m in models_usable_by(owner).filter(pk__in=ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise serializers.ValidationError(
                {"allowed_models": f"Unknown models or not usable by the key's owner: {missing}."}
            )
        return [found[i] for i in ids]

    def check_instances(self, owner, organisation, mode: str, ids: list[int]) -> list:
        """The instances of a key in ``mode``; an id the owner may not use is named, whether
        it exists or not."""
        if mode == PermissionMode.ALLOW_ALL:
            if ids:
                raise serializers.ValidationError(
                    {"instance_ids": "Instance ids are only for permission_mode 'per_instance'."}
                )
            return []
        if not ids:
            raise serializers.ValidationError(
                {"instance_ids": "A per_instance key needs at least one instance id."}
            )
        ids = list(dict.fromkeys(ids))
        usable = instances_usable_by(owner, organisation).filter(pk__in=ids)
        found = {i.pk: i for i in usable}
        missing = [i for i in ids if i not in found]
        if missing:
            raise serializers.ValidationError(
                {"instance_ids": f"Unknown instances or not usable by the key's owner: {missing}."}
            )
        return [found[i] for i in ids]


class KeyCreateSerializer(KnownFieldsOnly, KeyScopeMixin, serializers.Serializer):
    """Seed 003's CreateKeyRequest; staff may create a key for another user (`user_id`)."""

    name = serializers.CharField(max_length=100)
    user_id = serializers.IntegerField(required=False, help_text="Staff only; default: yourself.")
    organisation = serializers.SlugField(
        required=False, allow_null=True, help_text="The key acts for this organisation."
    )
    permissions = serializers.ListField(
        child=serializers.ChoiceField(Permission.choices),
        default=[Permission.READ, Permission.PROXY],
    )
    allowed_models = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), default=list, max_length=100
    )
    permission_mode = serializers.ChoiceField(
        PermissionMode.choices, default=PermissionMode.ALLOW_ALL
    )
    instance_ids = instance_ids_field(default=list)
    expires_at = serializers.IntegerField(
        required=False, allow_null=True, help_text="Unix time; empty: never."
    )

    def validate_user_id(self, value):
        user = users_visible_to(self.context["request"].user).filter(pk=value).first()
        if user is None:
            raise serializers.ValidationError("Unknown user.")
        return user

    def validate_expires_at(self, value):
        if value is None:
            return None
        try:
            moment = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise serializers.ValidationError("Not a valid Unix time.") from exc
        if moment <= datetime.now(tz=UTC):
            raise serializers.ValidationError("Must be in the future.")
        return moment

    def validate(self, attrs):
        owner = attrs.pop("user_id", None) or self.context["request"].user
        attrs["user"] = owner
        slug = attrs.get("organisation")
        if slug:
            org = Organisation.objects.filter(slug=slug, memberships__user=owner).first()
            if org is None:
                raise serializers.ValidationError(
                    {"organisation": "Unknown organisation, or the key's owner is not a member."}
                )
            attrs["organisation"] = org
        attrs["allowed_models"] = self.check_models(owner, attrs["allowed_models"])
        attrs["instances"] = self.check_instances(
            owner, attrs.get("organisation"), attrs["permission_mode"], attrs.pop("instance_ids")
        )
        return attrs


class KeyPermissionsSerializer(KnownFieldsOnly, KeyScopeMixin, serializers.Serializer):
    """A key's permissions, the models it is limited to (empty: all its owner's) and the
    instances it may use; a field left out keeps its value."""

    permissions = serializers.ListField(child=serializers.ChoiceField(Permission.choices))
    allowed_models = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        max_length=100,
    )
    permission_mode = serializers.ChoiceField(PermissionMode.choices, required=False)
    instance_ids = instance_ids_field(required=False)

    def validate(self, attrs):
        key = self.instance
        if "allowed_models" in attrs:
            attrs["allowed_models"] = self.check_models(key.user, attrs["allowed_models"])
        if "permission_mode" in attrs or "instance_ids" in attrs:
            mode = attrs.setdefault("permission_mode", key.permission_mode)
            ids = attrs.pop("instance_ids", None)
            if ids is None:  # the mode alone: a per-instance key keeps its instances
                kept = mode == PermissionMode.PER_INSTANCE
                ids = [i.pk for i in key.instances.all()] if kept else []
            attrs["instances"] = self.check_instances(key.user, key.organisation, mode, ids)
        return attrs


class KeyRotateSerializer(KnownFieldsOnly, serializers.Serializer):
    """A rotation: how long the old secret keeps working."""

    grace_seconds = StrictIntegerField(
        required=False,
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        help_text="Seconds the old secret keeps working (0: it stops at once); "
        "default: API_KEY_ROTATION_GRACE_SECONDS.",
    )
