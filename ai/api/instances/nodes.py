"""/api/v1/nodes (seed 003): each node's name and agent address, never its key.

For staff and whoever manages instances (the model_manager group): they pick the
node an instance runs on.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.permissions import ManagementAccess

from ...instances.nodes import node_get, nodes_list, shown_address


class NodeRole(permissions.BasePermission):
    """Staff, or a user who may see nodes or instances."""

    message = "This needs the admin or model_manager role."

    def has_permission(self, request, view):
        user = request.user
        return user.is_staff or user.has_perm("ai.view_node") or user.has_perm("ai.view_instance")


class NodeSerializer(serializers.Serializer):
    """seed 003's server.NodeResponse."""

    address = serializers.SerializerMethodField()

    def get_address(self, node) -> str:
        """The agent's base URL."""
        return shown_address(node.address)


class NodeView(APIView):
    permission_classes = [ManagementAccess, NodeRole]


@extend_schema(tags=["Nodes"])
class NodeListView(NodeView):
    @extend_schema(
        operation_id="v1_nodes_list",
        responses={
            200: {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Node"}}
        },
        summary="List all configured nodes",
        description="A map of every node: its name -> its config (the agent's address).",
    )
    def get(self, request):
        return Response({node.name: NodeSerializer(node).data for node in nodes_list()})


@extend_schema(
    tags=["Nodes"],
    parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH, description="Node name")],
)
class NodeDetailView(NodeView):
    @extend_schema(responses=NodeSerializer, summary="Get details of a specific node")
    def get(self, request, name):
        return Response(NodeSerializer(node_get(name=name)).data)
