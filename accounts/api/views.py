"""/api/v1/auth/keys (seed 003): a user manages their own keys; staff every key."""

from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from panel.db import MAX_ID

from ..models import APIKey
from ..selectors import apikeys_for_user
from ..services import apikey_create, apikey_permissions_set, apikey_revoke, apikey_rotate
from .permissions import ManagementAccess
from .serializers import (
    KeyCreatedSerializer,
    KeyCreateSerializer,
    KeyInstanceSerializer,
    KeyPermissionsSerializer,
    KeyRotateSerializer,
    KeySerializer,
)


class KeyFilter(filters.FilterSet):
    user = filters.NumberFilter(field_name="user_id", min_value=1, max_value=MAX_ID)
    organisation = filters.CharFilter(field_name="organisation__slug")

    class Meta:
        model = APIKey
        fields = ["user", "organisation"]


@extend_schema(tags=["Keys"])
class KeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """API keys: listed without hash or plain key; the plain key is returned once, at creation."""

    serializer_class = KeySerializer
    permission_classes = [ManagementAccess]
    filterset_class = KeyFilter
    ordering_fields = ["id", "name", "created_at", "last_used_at", "expires_at"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = "[0-9]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return APIKey.objects.none()
        # A revoked key is found for a rotation only, which then says why it refuses.
        return apikeys_for_user(self.request.user, include_revoked=self.action == "rotate")

    @extend_schema(request=KeyCreateSerializer, responses={201: KeyCreatedSerializer})
    def create(self, request):
        """Create a key; the response holds its plain text, never shown again."""
        serializer = KeyCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        key, plain = apikey_create(**serializer.validated_data)
        key.key = plain
        return Response(KeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        # Revoked rather than deleted, so usage reports keep their key.
        apikey_revoke(key=instance)

    @extend_schema(
        methods=["GET"],
        responses=KeyInstanceSerializer(many=True),
        summary="The instances a key may use (seed 003; empty with allow_all)",
    )
    @extend_schema(
        methods=["PUT"],
        request=KeyPermissionsSerializer,
        responses=KeySerializer,
        summary="Replace a key's permissions, model scope and instance permissions",
    )
    @action(
        detail=True,
        methods=["get", "put"],
        serializer_class=KeyPermissionsSerializer,
        pagination_class=None,  # a plain array, as seed 003's
        filter_backends=[],
    )
    def permissions(self, request, pk=None):
        key = self.get_object()
        if request.method == "GET":
            instances = sorted(key.instances.all(), key=lambda i: i.pk)
            return Response(KeyInstanceSerializer(instances, many=True).data)
        serializer = KeyPermissionsSerializer(key, data=request.data)
        serializer.is_valid(raise_exception=True)
        key = apikey_permissions_set(key=key, **serializer.validated_data)
        return Response(KeySerializer(key).data)

    @extend_schema(
        request=KeyRotateSerializer,
        responses={200: KeyCreatedSerializer},
        summary="Rotate a key: a new secret, shown once; the old one works for a grace period",
    )
    @action(detail=True, methods=["post"], serializer_class=KeyRotateSerializer)
    def rotate(self, request, pk=None):
        key = self.get_object()
        serializer = KeyRotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, plain = apikey_rotate(key=key, **serializer.validated_data)
        key.key = plain
        return Response(KeyCreatedSerializer(key).data)
