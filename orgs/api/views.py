"""/api/v1/orgs and their members: owners and admins manage their own organisation only."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from accounts.api.permissions import IsStaff, ManagementAccess
from panel.db import MAX_ID
from panel.errors import NotFound, PermissionDenied

from ..models import Membership, Organisation
from ..selectors import can_administer, can_own, memberships_of, organisations_for_user
from ..services import membership_add, membership_remove, membership_role_set, organisation_create
from .serializers import (
    MemberAddSerializer,
    MemberRoleSerializer,
    MemberSerializer,
    OrganisationCreateSerializer,
    OrganisationSerializer,
)

# What an organisation slug may hold in a URL.
SLUG_PATTERN = "[-a-zA-Z0-9_]+"


@extend_schema(tags=["Organisations"])
class OrganisationResourceViewSet(viewsets.ModelViewSet):
    """What organisations and their members share: management access and the schema's tag."""

    permission_classes = [ManagementAccess]


class OrganisationViewSet(OrganisationResourceViewSet):
    """Organisations: members see theirs, owners and admins edit, staff create."""

    serializer_class = OrganisationSerializer
    lookup_field = "slug"
    lookup_value_regex = SLUG_PATTERN
    filterset_fields = ["tier"]
    ordering_fields = ["id", "name", "slug", "created_at"]
    ordering = ["name"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Organisation.objects.none()
        return organisations_for_user(self.request.user)

    def get_permissions(self):
        if self.action == "create":
            return [ManagementAccess(), IsStaff()]
        return super().get_permissions()

    @extend_schema(request=OrganisationCreateSerializer, responses={201: OrganisationSerializer})
    def create(self, request):
        serializer = OrganisationCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        organisation = organisation_create(**serializer.validated_data)
        return Response(OrganisationSerializer(organisation).data, status=status.HTTP_201_CREATED)

    def check_object_permissions(self, request, organisation):
        super().check_object_permissions(request, organisation)
        if request.method == "DELETE" and not can_own(request.user, organisation):
            raise PermissionDenied("Only an owner of this organisation can delete it.")
        if request.method not in SAFE_METHODS and not can_administer(request.user, organisation):
            raise PermissionDenied("Only an owner or admin of this organisation can change it.")


class MemberViewSet(OrganisationResourceViewSet):
    """Members of one organisation and their roles, by user id."""

    serializer_class = MemberSerializer
    lookup_field = "user_id"
    lookup_value_regex = "[0-9]+"
    filterset_fields = ["role"]
    ordering_fields = ["created_at", "role", "user__username"]
    ordering = ["created_at", "id"]

    def get_object(self):
        # An id past the largest row id names nobody; SQLite could not even bind it.
        if int(self.kwargs["user_id"]) > MAX_ID:
            raise NotFound("No such member.")
        return super().get_object()

    def get_organisation(self) -> Organisation:
        if not hasattr(self, "_organisation"):
            visible = organisations_for_user(self.request.user)
            self._organisation = get_object_or_404(visible, slug=self.kwargs["org_slug"])
        return self._organisation

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return memberships_of(self.get_organisation())

    def get_serializer_class(self):
        if self.action == "create":
            return MemberAddSerializer
        if self.action in ("update", "partial_update"):
            return MemberRoleSerializer
        return MemberSerializer

    def initial(self, request, *args, **kwargs):
        # Outsiders get 404 and plain members 403 before any input is looked at.
        super().initial(request, *args, **kwargs)
        organisation = self.get_organisation()
        if request.method not in SAFE_METHODS and not can_administer(request.user, organisation):
            raise PermissionDenied("Only an owner or admin of this organisation manages members.")

    def perform_create(self, serializer):
        serializer.instance = membership_add(
            organisation=self.get_organisation(), by=self.request.user, **serializer.validated_data
        )

    def perform_update(self, serializer):
        serializer.instance = membership_role_set(
            membership=serializer.instance,
            role=serializer.validated_data.get("role", serializer.instance.role),
            by=self.request.user,
        )

    def perform_destroy(self, instance):
        membership_remove(membership=instance, by=self.request.user)
