"""/api/v1/ai/models (seed 004), /api/v1/ai/upstreams and /api/v1/ai/links.

Staff (admin) and the model_manager group manage the registry; nobody else
reaches it. Writes go through the ORM one row at a time (save/delete), so the
gateway's cache invalidation signals fire.
"""

from django.db.models import Prefetch
from django_filters import rest_framework as filters
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.api.permissions import (
    ManagementAccess,
    RegistryRole,
    RegistryRoleOrOrganisationReader,
    reads_whole_registry,
)
from orgs.selectors import organisations_administered_by

from ...models import AIModel, ModelLink, Upstream
from ...services.registry import model_deploy
from ...training.deploy import artifact_deploy, artifact_get_for_user
from .serializers import (
    AIModelSerializer,
    ArtifactDeploySerializer,
    ModelConfigSerializer,
    ModelDeploySerializer,
    ModelLinkSerializer,
    UpstreamSerializer,
)


class ModelFilter(filters.FilterSet):
    class Meta:
        model = AIModel
        fields = ["name", "kind", "is_active", "is_listed"]


@extend_schema(tags=["Models"])
class ModelViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Models clients call by name; created with their upstreams by ``deploy``."""

    queryset = AIModel.objects.prefetch_related(
        Prefetch("upstreams", queryset=Upstream.objects.select_related("instance"))
    )
    serializer_class = AIModelSerializer
    permission_classes = [ManagementAccess, RegistryRole]
    filterset_class = ModelFilter
    ordering_fields = ["id", "name", "kind", "created_at", "updated_at"]
    ordering = ["name"]
    lookup_value_regex = "[0-9]+"

    @extend_schema(
        request=PolymorphicProxySerializer(
            component_name="ModelOrArtifactDeploy",
            serializers=[ModelDeploySerializer, ArtifactDeploySerializer],
            resource_type_field_name=None,
        ),
        responses={201: AIModelSerializer},
    )
    @action(detail=False, methods=["post"], serializer_class=ModelDeploySerializer)
    def deploy(self, request):
        """Register a model with the upstreams that serve it, or serve a trained artifact."""
        if _is_artifact(request.data):
            model = self._deploy_artifact(request)
        else:
            serializer = ModelDeploySerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            model = model_deploy(**serializer.validated_data)
        model = self.get_queryset().get(pk=model.pk)
        return Response(AIModelSerializer(model).data, status=status.HTTP_201_CREATED)

    def _deploy_artifact(self, request) -> AIModel:
        serializer = ArtifactDeploySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        artifact = artifact_get_for_user(
            user=request.user, artifact=data.get("artifact", ""), job=data.get("job", "")
        )
        return artifact_deploy(
            artifact=artifact,
            user=request.user,
            name=data.get("name", ""),
            organisation=data.get("organisation", ""),
        )

    @extend_schema(methods=["GET"], responses=ModelConfigSerializer, summary="A model's config")
    @extend_schema(
        methods=["PUT"],
        request=ModelConfigSerializer,
        responses=ModelConfigSerializer,
        summary="Replace a model's config",
    )
    @action(detail=True, methods=["get", "put"], serializer_class=ModelConfigSerializer)
    def config(self, request, pk=None):
        model = self.get_object()
        if request.method == "PUT":
            serializer = ModelConfigSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            model.config = serializer.validated_data
            model.full_clean()
            model.save()
        return Response(ModelConfigSerializer(model.config).data)


def _is_artifact(data) -> bool:
    """A deploy of a trained artifact names one (or its job) instead of upstreams."""
    return isinstance(data, dict) and ("artifact" in data or "job" in data)


class UpstreamFilter(filters.FilterSet):
    class Meta:
        model = Upstream
        fields = ["model", "is_enabled", "health_status"]


@extend_schema(tags=["Upstreams"])
class UpstreamViewSet(viewsets.ModelViewSet):
    """Endpoints serving models; their API keys are write-only."""

    queryset = Upstream.objects.select_related("model")
    serializer_class = UpstreamSerializer
    permission_classes = [ManagementAccess, RegistryRole]
    filterset_class = UpstreamFilter
    ordering_fields = ["id", "name", "priority", "weight", "created_at", "health_status"]
    ordering = ["model__name", "priority", "name"]
    lookup_value_regex = "[0-9]+"


class LinkFilter(filters.FilterSet):
    org = filters.CharFilter(field_name="organisation__slug", help_text="Organisation slug")

    class Meta:
        model = ModelLink
        fields = ["model", "user", "organisation", "org", "is_enabled", "is_default"]


@extend_schema(tags=["Links"])
class LinkViewSet(viewsets.ModelViewSet):
    """Who may use which model (a user or an organisation), within which limits."""

    queryset = ModelLink.objects.select_related("model", "user", "organisation")
    serializer_class = ModelLinkSerializer
    # The registry roles read and write every link; an organisation's owners and admins
    # read their organisation's links (and nobody else's: 404), never write them.
    permission_classes = [ManagementAccess, RegistryRoleOrOrganisationReader]
    filterset_class = LinkFilter
    ordering_fields = ["id", "created_at", "model__name"]
    ordering = ["id"]
    lookup_value_regex = "[0-9]+"

    def get_queryset(self):
        queryset = super().get_queryset()
        user = self.request.user
        if reads_whole_registry(user, ModelLink):
            return queryset
        return queryset.filter(organisation__in=organisations_administered_by(user))
