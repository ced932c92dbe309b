from rest_framework import serializers

from accounts.models import User
from panel.serializers import KnownFieldsOnly

from ..models import Membership, Organisation, Role


class OrganisationSerializer(KnownFieldsOnly, serializers.ModelSerializer):
    class Meta:
        model = Organisation
        fields = ["id", "name", "slug", "tier", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_tier(self, value):
        changed = self.instance is None or self.instance.tier != value
        if changed and not self.context["request"].user.is_staff:
            raise serializers.ValidationError("Only an administrator can set the tier.")
        return value


class OrganisationCreateSerializer(OrganisationSerializer):
    """A new organisation; ``owner`` (a username) becomes its first owner."""

    owner = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.all(),
        required=False,
        allow_null=True,
        write_only=True,
    )

    class Meta(OrganisationSerializer.Meta):
        fields = [*OrganisationSerializer.Meta.fields, "owner"]


class MemberSerializer(KnownFieldsOnly, serializers.ModelSerializer):
    """A membership, named by the member's user id in URLs."""

    user_id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    role = serializers.ChoiceField(Role.choices, default=Role.MEMBER)

    class Meta:
        model = Membership
        fields = ["user_id", "username", "role", "created_at"]
        read_only_fields = ["created_at"]


class MemberAddSerializer(MemberSerializer):
    """A new member, named by username or e-mail address (give one)."""

    username = serializers.CharField(
        source="user.username",
        required=False,
        max_length=150,
        help_text="Someone who already shares an organisation with you (staff: anyone).",
    )
    email = serializers.EmailField(
        required=False, write_only=True, help_text="Instead of `username`."
    )

    class Meta(MemberSerializer.Meta):
        fields = [*MemberSerializer.Meta.fields, "email"]

    def validate(self, attrs):
        username = attrs.pop("user", {}).get("username")
        email = attrs.pop("email", None)
        if (username is None) == (email is None):
            raise serializers.ValidationError(
                {"username": "Give either a username or an e-mail address."}
            )
        return {**attrs, "username": username, "email": email}


class MemberRoleSerializer(MemberSerializer):
    """A role change: the member stays the same."""

    role = serializers.ChoiceField(Role.choices)
