"""API keys in seed 003's shape (llamactl): never a hash; the plain key only once."""

from datetime import UTC, datetime

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orgs.models import Organisation
from panel.db import MAX_ID

from ..models import APIKey, Permission
from ..selectors import models_usable_by, users_visible_to


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


class KeyInstanceSerializer(serializers.Serializer):
    """Seed 003's KeyPermissionResponse: a model the key is limited to."""

    instance_id = serializers.IntegerField()
    instance_name = serializers.CharField()


class KeySerializer(serializers.ModelSerializer):
    """Seed 003's KeyResponse, plus the visible prefix and the key's scope."""

    user_id = serializers.IntegerField(read_only=True)
    organisation = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    permissions = serializers.ListField(child=serializers.ChoiceField(Permission.choices))
    permission_mode = serializers.SerializerMethodField()
    allowed_models = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    created_at = serializers.SerializerMethodField()
    expires_at = serializers.SerializerMethodField()
    last_used_at = serializers.SerializerMethodField()

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
            "allowed_models",
            "created_at",
            "expires_at",
            "last_used_at",
        ]

    @extend_schema_field({"type": "string", "enum": ["allow_all", "per_instance"]})
    def get_permission_mode(self, key) -> str:
        return "per_instance" if key.allowed_models.all() else "allow_all"

    @extend_schema_field(OpenApiTypes.INT)
    def get_created_at(self, key) -> int:
        return unix(key.created_at)

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_expires_at(self, key):
        return unix(key.expires_at)

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_last_used_at(self, key):
        return unix(key.last_used_at)


class KeyCreatedSerializer(KeySerializer):
    """Seed 003's CreateKeyResponse: the key with its plain text, shown this once."""

    key = serializers.CharField(read_only=True, help_text="The plain key; it is never shown again.")

    class Meta(KeySerializer.Meta):
        fields = [*KeySerializer.Meta.fields, "key"]


class KeyScopeMixin:
    """Checks a key's organisation and models against its owner's memberships and links."""

    def check_models(self, owner, ids):
        found = {m.pk: m for m in models_usable_by(owner).filter(pk__in=ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise serializers.ValidationError(
                {"allowed_models": f"Unknown models or not usable by the key's owner: {missing}."}
            )
        return [found[i] for i in ids]


class KeyCreateSerializer(KeyScopeMixin, serializers.Serializer):
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
        return attrs


class KeyPermissionsSerializer(KeyScopeMixin, serializers.Serializer):
    """A key's permissions and the models it is limited to (empty: all its owner's)."""

    permissions = serializers.ListField(child=serializers.ChoiceField(Permission.choices))
    permission_mode = serializers.ChoiceField(["allow_all", "per_instance"], read_only=True)
    allowed_models = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        max_length=100,
        write_only=True,
    )
    instances = KeyInstanceSerializer(many=True, read_only=True)

    def validate(self, attrs):
        if "allowed_models" in attrs:
            attrs["allowed_models"] = self.check_models(self.instance.user, attrs["allowed_models"])
        return attrs

    def to_representation(self, key):
        models = sorted(key.allowed_models.all(), key=lambda m: m.pk)
        return {
            "permissions": list(key.permissions),
            "permission_mode": "per_instance" if models else "allow_all",
            "instances": [{"instance_id": m.pk, "instance_name": m.name} for m in models],
        }
