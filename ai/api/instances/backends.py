"""/api/v1/backends (seed 003): a backend's command line as instance options, and what the
llama-server of this host says of itself (--help, --version, --list-devices).

For staff and whoever manages instances. The parsed options are what
POST /api/v1/instances/{name} takes.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from accounts.models import Permission, User
from panel.errors import ErrorCode, InvalidRequest, PermissionDenied

from ...instances import backends, programs
from ...models import Backend
from ..base import ai_route
from .serializers import BackendOptionsSerializer, StrictCharField, StrictSerializer
from .views import InstanceView

ROUTE_BACKENDS = {"llama-cpp": Backend.LLAMA_CPP, "vllm": Backend.VLLM, "mlx": Backend.MLX}


class ParseCommandSerializer(StrictSerializer):
    """seed 003's server.ParseCommandRequest."""

    command = StrictCharField(
        max_length=20_000,
        allow_blank=True,
        trim_whitespace=False,
        help_text="The server's command line, as typed in a shell.",
    )


class ParsedOptionsSerializer(serializers.Serializer):
    """The instance options a command line sets (seed 003's instance.Options, in part)."""

    backend_type = serializers.ChoiceField(choices=Backend.choices)
    backend_options = BackendOptionsSerializer()
    command_override = serializers.CharField(
        help_text="The executable, when it is not the backend's own (llama-server...)."
    )
    environment = serializers.DictField(child=serializers.CharField())
    port = serializers.IntegerField(allow_null=True)


def parsed_options(fields: dict) -> dict:
    """``backends.parse_command``'s Instance fields in the API's names."""
    return {
        "backend_type": fields["backend"],
        "backend_options": {
            "model": fields["model_path"],
            "context_size": fields.get("context_size"),
            "gpu_layers": fields.get("gpu_layers"),
            "threads": fields.get("threads"),
            "parallel": fields.get("parallel"),
            "extra_args": fields["extra_args"],
        },
        "command_override": fields["command_override"],
        "environment": fields["environment"],
        "port": fields["port"],
    }


@extend_schema(tags=["Backends"])
class ParseCommandView(InstanceView):
    role_actions = {"POST": "view"}  # it only reads what it is sent
    backend = Backend.LLAMA_CPP

    @extend_schema(
        request=ParseCommandSerializer,
        responses=ParsedOptionsSerializer,
        summary="Parse a backend's command line into instance options",
        description="--host is left out (the node decides), as is vLLM's --served-model-name "
        "(an instance serves its own name); other unknown flags go to extra_args as written.",
    )
    def post(self, request):
        body = ParseCommandSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            fields = backends.parse_command(self.backend, body.validated_data["command"])
        except backends.CommandError as exc:
            raise InvalidRequest(str(exc), param="command", code=ErrorCode.INVALID_VALUE) from exc
        return Response(parsed_options(fields))


@sync_to_async
def _check_role(user_id: int) -> None:
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None or not (user.is_staff or user.has_perm("ai.view_instance")):
        raise PermissionDenied("This needs the admin or model_manager role.")


def llama_server_view(question: str):
    """GET /backends/llama-cpp/<question>: the program's own text, as text/plain."""

    @ai_route(methods={"GET": Permission.MANAGE})
    async def view(request, identity, request_id):
        await _check_role(identity.user_id)
        text = await programs.llama_server_says(question)
        return HttpResponse(text, content_type="text/plain; charset=utf-8")

    view.__name__ = view.__qualname__ = f"llama_server_{question}"
    return view


llama_server_help = llama_server_view("help")
llama_server_version = llama_server_view("version")
llama_server_devices = llama_server_view("devices")
