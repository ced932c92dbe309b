from rest_framework import serializers

from accounts.models import User

from ..models import Membership, Organisation, Role


class OrganisationSerializer(serializers.ModelSerializer):
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


class MemberSerializer(serializers.ModelSerializer):
    """A membership, named by the member's user id in URLs."""

    user_id = serializers.IntegerField(read_only=True)
    username = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=User.objects.all()
    )
    role = serializers.ChoiceField(Role.choices, default=Role.MEMBER)

    class Meta:
        model = Membership
        fields = ["user_id", "username", "role", "created_at"]
        read_only_fields = ["created_at"]


class MemberRoleSerializer(MemberSerializer):
    """A role change: the member stays the same."""

    username = serializers.CharField(source="user.username", read_only=True)
    role = serializers.ChoiceField(Role.choices)
