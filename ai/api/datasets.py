"""Training datasets: /api/v1/ai/datasets (management API) and OpenAI's /v1/files.

Both store the same rows (``ai.training.datasets``). Reading needs an API key with
``read`` (or ``manage``), uploading and deleting one with ``manage``; a browser session
acts with every key permission. Roles and tenancy are the selectors': members of the
owning organisation read, staff and the trainer role upload and delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.http import HttpResponse
from django_filters import rest_framework as filters
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, permissions, serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.permissions import acting_key
from accounts.models import Permission
from panel.errors import ErrorCode, InvalidRequest

from ..models import Dataset
from ..training import datasets, selectors

# What a multipart body may hold beside the file (boundaries, headers, small fields).
MULTIPART_SLACK = 64 * 1024
NAME_MAX = 255
UPLOAD_ROLE = "Uploading a dataset needs the admin or trainer role."


class DatasetAccess(permissions.BasePermission):
    """Signed in; an API key needs ``read`` (or ``manage``) to read and ``manage`` to write."""

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        is_read = request.method in permissions.SAFE_METHODS
        key = acting_key(request)
        if key is not None and not (
            key.has_permission(Permission.MANAGE)
            or (is_read and key.has_permission(Permission.READ))
        ):
            needed = "read" if is_read else "manage"
            raise exceptions.PermissionDenied(f"This API key lacks the '{needed}' permission.")
        if request.method == "POST" and not selectors.dataset_may_upload_any(request.user):
            # Refused before the upload is read: its size or lines do not matter.
            raise exceptions.PermissionDenied(UPLOAD_ROLE)
        return True


class DatasetSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    organisation = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "organisation",
            "created_by",
            "purpose",
            "bytes",
            "lines",
            "sha256",
            "created_at",
        ]


class FileSerializer(serializers.Serializer):
    """OpenAI's file object."""

    id = serializers.CharField(source="public_id")
    object = serializers.SerializerMethodField()
    bytes = serializers.IntegerField()
    created_at = serializers.SerializerMethodField()
    filename = serializers.CharField(source="name")
    purpose = serializers.CharField()
    status = serializers.SerializerMethodField()

    def get_object(self, dataset) -> str:
        return "file"

    def get_created_at(self, dataset) -> int:
        return int(dataset.created_at.timestamp())

    def get_status(self, dataset) -> str:
        # Checked before it was stored: a dataset is never anything but processed.
        return "processed"


@dataclass(frozen=True, slots=True)
class Upload:
    name: str
    data: bytes
    organisation: str | None


def _upload(request, *, fields: tuple[str, ...], multipart_only: bool = False) -> Upload:
    """The uploaded file: multipart ``file`` (and the other ``fields``), or a raw body with
    ``?name=`` (a raw body is never handed to DRF's parsers)."""
    limit = settings.TRAINING_DATASET_MAX_BYTES
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        datasets.dataset_size_check(int(length))
    if request.content_type.startswith("multipart/form-data"):
        unknown = sorted(set(request.data) - {"file", *fields})
        if unknown:
            raise InvalidRequest("Unknown field.", param=unknown[0], code=ErrorCode.INVALID_VALUE)
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidRequest("Upload the dataset as the multipart field 'file'.", param="file")
        datasets.dataset_size_check(upload.size)
        name = _name(request.data.get("name") or upload.name)
        organisation = request.data.get("organisation") or request.query_params.get("organisation")
        return Upload(name, upload.read(), organisation)
    if multipart_only:
        raise InvalidRequest("Upload the file as multipart/form-data.", param="file")
    # Read from the stream, at most one byte past the limit: ``request.body`` would stop
    # at DATA_UPLOAD_MAX_MEMORY_SIZE rather than at the dataset limit.
    stream = request.stream
    body = stream.read(limit + 1) if stream is not None else b""
    datasets.dataset_size_check(len(body))
    query = request.query_params
    return Upload(_name(query.get("name")), body, query.get("organisation"))


def _name(name: str | None) -> str:
    name = (name or "").strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise InvalidRequest(
            f"A dataset needs a name of 1 to {NAME_MAX} printable characters "
            "(the file's name, or ?name= with a raw body).",
            param="name",
            code=ErrorCode.INVALID_VALUE,
        )
    return name


def _create(request, upload: Upload) -> Dataset:
    """The dataset stored for the caller, owned as the upload's ``organisation`` says."""
    owner = datasets.dataset_owner(
        user=request.user,
        organisation=upload.organisation,
        key_organisation=getattr(acting_key(request), "organisation", None),
    )
    return datasets.dataset_create(
        user=request.user, organisation=owner, name=upload.name, data=upload.data
    )


DATASET_QUERY = [
    OpenApiParameter("name", str, description="The dataset's name, with a raw JSONL body."),
    OpenApiParameter("organisation", str, description="The owner's slug (or id)."),
]


class DatasetFilter(filters.FilterSet):
    organisation = filters.CharFilter(field_name="organisation__slug", help_text="An owner's slug")

    class Meta:
        model = Dataset
        fields = ["organisation", "name"]


@extend_schema(tags=["Datasets"])
class DatasetListView(generics.ListAPIView):
    """Training datasets the caller may see; upload one (multipart ``file``, or raw JSONL)."""

    permission_classes = [DatasetAccess]
    serializer_class = DatasetSerializer
    filterset_class = DatasetFilter
    ordering_fields = ["id", "name", "bytes", "lines", "created_at"]
    ordering = ["-created_at", "-id"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Dataset.objects.none()
        return selectors.datasets_for_user(self.request.user)

    @extend_schema(
        request={
            "multipart/form-data": OpenApiTypes.OBJECT,
            "application/jsonl": OpenApiTypes.BINARY,
        },
        parameters=DATASET_QUERY,
        responses={201: DatasetSerializer},
    )
    def post(self, request):
        dataset = _create(request, _upload(request, fields=("name", "organisation")))
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["Datasets"])
class DatasetDetailView(APIView):
    """One dataset's metadata (never its content); delete it."""

    permission_classes = [DatasetAccess]
    serializer_class = DatasetSerializer

    def get(self, request, public_id: str):
        dataset = selectors.dataset_get_for_user(request.user, public_id)
        return Response(DatasetSerializer(dataset).data)

    @extend_schema(responses={204: None})
    def delete(self, request, public_id: str):
        dataset = selectors.dataset_get_for_user(request.user, public_id)
        datasets.dataset_delete(user=request.user, dataset=dataset)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- OpenAI's /v1/files -------------------------------------------------------------------

FILES_LIMIT_MAX = 10_000


class FileListSerializer(serializers.Serializer):
    """OpenAI's list of files, with its cursor."""

    object = serializers.CharField()
    data = FileSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class ListSchema(AutoSchema):
    """A list that is no viewset: its GET is named ``..._list``, not ``..._retrieve``."""

    def get_operation_id(self):
        operation_id = super().get_operation_id()
        return operation_id.replace("_retrieve", "_list") if self.method == "GET" else operation_id


@extend_schema(tags=["Files"])
class FileListView(APIView):
    """OpenAI's files (purpose ``fine-tune`` only): list with a cursor, upload."""

    permission_classes = [DatasetAccess]
    serializer_class = FileSerializer
    schema = ListSchema()

    @extend_schema(
        parameters=[
            OpenApiParameter("purpose", str),
            OpenApiParameter("limit", int),
            OpenApiParameter("order", str, enum=["asc", "desc"]),
            OpenApiParameter("after", str),
        ],
        responses=FileListSerializer,
    )
    def get(self, request):
        query = request.query_params
        rows = selectors.datasets_for_user(request.user)
        if purpose := query.get("purpose"):
            if "\x00" in purpose:  # no stored purpose holds one (PostgreSQL refuses the query)
                raise InvalidRequest("purpose must be a purpose's name.", param="purpose")
            rows = rows.filter(purpose=purpose)
        rows, limit = _cursor(rows, request)
        page = list(rows[: limit + 1])
        data = FileSerializer(page[:limit], many=True).data
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(page) > limit,
            }
        )

    @extend_schema(request={"multipart/form-data": OpenApiTypes.OBJECT}, responses=FileSerializer)
    def post(self, request):
        upload = _upload(request, fields=("purpose", "organisation"), multipart_only=True)
        purpose = request.data.get("purpose")
        if purpose != datasets.PURPOSE:
            raise InvalidRequest(
                f"purpose must be '{datasets.PURPOSE}': only fine-tuning files are stored here.",
                param="purpose",
                code=ErrorCode.INVALID_VALUE,
            )
        return Response(FileSerializer(_create(request, upload)).data)


def _cursor(rows, request):
    """``rows`` in ``order`` (by creation) after the ``after`` id, and the page's ``limit``."""
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    limit = query.get("limit", str(FILES_LIMIT_MAX))
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= FILES_LIMIT_MAX):
        raise InvalidRequest(f"limit must be from 1 to {FILES_LIMIT_MAX}.", param="limit")
    rows = rows.order_by("id" if order == "asc" else "-id")
    if query.get("after"):
        after = selectors.dataset_get_for_user(request.user, query["after"])
        rows = rows.filter(id__gt=after.pk) if order == "asc" else rows.filter(id__lt=after.pk)
    return rows, int(limit)


@extend_schema(tags=["Files"])
class FileDetailView(APIView):
    """One file object; delete it."""

    permission_classes = [DatasetAccess]
    serializer_class = FileSerializer

    def get(self, request, file_id: str):
        return Response(FileSerializer(selectors.dataset_get_for_user(request.user, file_id)).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def delete(self, request, file_id: str):
        dataset = selectors.dataset_get_for_user(request.user, file_id)
        datasets.dataset_delete(user=request.user, dataset=dataset)
        return Response({"id": file_id, "object": "file", "deleted": True})


class AnyAccept(BaseContentNegotiation):
    """Errors in JSON whatever the client accepts (the SDK asks for application/binary)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema(tags=["Files"], responses={200: OpenApiTypes.BINARY})
class FileContentView(APIView):
    """The file's bytes, as uploaded."""

    permission_classes = [DatasetAccess]
    content_negotiation_class = AnyAccept

    def get(self, request, file_id: str):
        dataset = selectors.dataset_get_for_user(request.user, file_id, with_content=True)
        response = HttpResponse(bytes(dataset.content), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{dataset.public_id}.jsonl"'
        return response
