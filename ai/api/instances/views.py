"""/api/v1/instances (seed 003): local model servers, for staff and the model_manager group.

Writes save the desired state, then nudge the node's agent; an agent that does not
answer leaves the change saved and turns the answer into 503 agent_unavailable.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.permissions import ManagementAccess, acting_key
from panel.errors import AgentUnavailable, ErrorCode, InvalidRequest, PermissionDenied

from ...gateway.resolve import key_may_use_instance
from ...instances import client, services
from ...instances.selectors import instance_get, instances_list, name_check
from ...models import Instance
from .serializers import InstanceSerializer, InstanceWriteSerializer

# API names of the Instance fields a model error may name.
API_FIELD_NAMES = {
    "backend": "backend_type",
    "model_path": "backend_options.model",
    "context_size": "backend_options.context_size",
    "gpu_layers": "backend_options.gpu_layers",
    "threads": "backend_options.threads",
    "parallel": "backend_options.parallel",
    "extra_args": "backend_options.extra_args",
}
MAX_LOG_LINES = 1_000_000
DIGITS = re.compile(r"[0-9]{1,7}")


class InstanceRole(permissions.BasePermission):
    """Staff, or a user holding the instance permission the view names for the method."""

    message = "This needs the admin or model_manager role."

    def has_permission(self, request, view):
        if request.user.is_staff:
            return True
        action = view.role_actions.get(request.method, "view")
        return request.user.has_perm(f"ai.{action}_instance")


class InstanceView(APIView):
    permission_classes = [ManagementAccess, InstanceRole]
    role_actions = {"GET": "view", "HEAD": "view", "POST": "change"}


def _permitted(request, name: str) -> Instance:
    """The instance named ``name``, if the caller's key may use it (403 otherwise)."""
    instance = instance_get(name=name)
    if not key_may_use_instance(acting_key(request), instance.pk):
        raise PermissionDenied(f"This API key may not use the instance '{name}'.")
    return instance


def _render(instance: Instance, code: int = status.HTTP_200_OK) -> Response:
    return Response(InstanceSerializer(instance).data, status=code)


def _applied(instance: Instance) -> Instance:
    """The written instance, or 503 when its agent did not take the nudge."""
    if instance.agent_answered is False:
        raise AgentUnavailable(
            f"The change is saved; the instance agent of node '{instance.node}' is not "
            "answering and will apply it when it is back."
        )
    return instance


def _write(request, call, **kwargs) -> Instance:
    """Validates the body and runs ``call`` with its options; model errors name API fields."""
    body = InstanceWriteSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    registration = {k: body.validated_data.get(k) for k in ("model", "priority")}
    try:
        return call(options=body.to_options(), **registration, **kwargs)
    except DjangoValidationError as exc:
        if not hasattr(exc, "error_dict"):
            raise
        raise serializers.ValidationError(
            {API_FIELD_NAMES.get(name, name): errors for name, errors in exc.message_dict.items()}
        ) from exc


@extend_schema(tags=["Instances"])
class InstanceListView(InstanceView):
    @extend_schema(responses=InstanceSerializer(many=True), summary="List all instances")
    def get(self, request):
        instances, key = instances_list(), acting_key(request)
        ids = key.instance_ids if key is not None else None
        if ids is not None:  # a per-instance key sees only its instances
            instances = instances.filter(pk__in=ids)
        return Response(InstanceSerializer(instances, many=True).data)


NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="Instance name")


@extend_schema(tags=["Instances"], parameters=[NAME])
class InstanceDetailView(InstanceView):
    role_actions = {
        "GET": "view",
        "HEAD": "view",
        "POST": "add",
        "PUT": "change",
        "DELETE": "delete",
    }

    @extend_schema(responses=InstanceSerializer, summary="Get details of a specific instance")
    def get(self, request, name):
        return _render(_permitted(request, name))

    @extend_schema(
        request=InstanceWriteSerializer,
        responses={201: InstanceSerializer},
        summary="Create and start a new instance",
    )
    def post(self, request, name):
        name_check(name)
        key = acting_key(request)
        if key is not None and key.instance_ids is not None:
            raise PermissionDenied("A per_instance API key may not create instances.")
        instance = _write(request, services.instance_create, name=name)
        return _render(_applied(instance), status.HTTP_201_CREATED)

    @extend_schema(
        request=InstanceWriteSerializer,
        responses=InstanceSerializer,
        summary="Update an instance's configuration (a running one restarts)",
    )
    def put(self, request, name):
        instance = _write(request, services.instance_update, instance=_permitted(request, name))
        return _render(_applied(instance))

    @extend_schema(responses={204: None}, summary="Stop and remove an instance")
    def delete(self, request, name):
        _applied(services.instance_delete(instance=_permitted(request, name)))
        return Response(status=status.HTTP_204_NO_CONTENT)


def action_view(verb: str, call, summary: str):
    """POST /instances/{name}/<verb>: the service ``call``, answered with the instance."""

    @extend_schema(tags=["Instances"], parameters=[NAME])
    class ActionView(InstanceView):
        @extend_schema(request=None, responses=InstanceSerializer, summary=summary)
        def post(self, request, name):
            return _render(_applied(call(instance=_permitted(request, name))))

    ActionView.__name__ = ActionView.__qualname__ = f"Instance{verb.title()}View"
    return ActionView.as_view()


start = action_view("start", services.instance_start, "Start a stopped instance")
stop = action_view("stop", services.instance_stop, "Stop a running instance")
restart = action_view("restart", services.instance_restart, "Restart an instance")


def _lines(value: str | None) -> int | None:
    if value is None:
        return None
    if not DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_LOG_LINES:
        raise InvalidRequest(
            f"lines must be an integer from 1 to {MAX_LOG_LINES}.",
            param="lines",
            code=ErrorCode.INVALID_VALUE,
        )
    return int(value)


@extend_schema(tags=["Instances"], parameters=[NAME])
class InstanceLogsView(InstanceView):
    @extend_schema(
        parameters=[OpenApiParameter("lines", int, description="The last N lines (default: all)")],
        responses={(200, "text/plain"): OpenApiTypes.STR},
        summary="Get logs from a specific instance",
    )
    def get(self, request, name):
        instance = _permitted(request, name)
        lines = _lines(request.query_params.get("lines"))
        text = client.agent_logs(instance.node, instance.name, lines)
        return HttpResponse(text, content_type="text/plain; charset=utf-8")
