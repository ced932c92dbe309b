from django.urls import path, re_path

from . import backends, nodes, views
from .llamacpp import VIEWS, route_not_found
from .proxy import instance_proxy

urlpatterns = [
    path("instances", views.InstanceListView.as_view(), name="instance-list"),
    path("instances/<str:name>", views.InstanceDetailView.as_view(), name="instance-detail"),
    path("instances/<str:name>/start", views.start, name="instance-start"),
    path("instances/<str:name>/stop", views.stop, name="instance-stop"),
    path("instances/<str:name>/restart", views.restart, name="instance-restart"),
    path("instances/<str:name>/logs", views.InstanceLogsView.as_view(), name="instance-logs"),
    # /proxy, /proxy/ and /proxy/<path>: the path relayed as is (empty: the server's root).
    re_path(r"^instances/(?P<name>[^/]+)/proxy(?:/(?P<path>.*))?$", instance_proxy),
    path("nodes", nodes.NodeListView.as_view(), name="node-list"),
    path("nodes/<str:name>", nodes.NodeDetailView.as_view(), name="node-detail"),
    *[
        path(
            f"backends/{route}/parse-command",
            backends.ParseCommandView.as_view(backend=backend),
            name=f"backend-parse-{route}",
        )
        for route, backend in backends.ROUTE_BACKENDS.items()
    ],
    path("backends/llama-cpp/help", backends.llama_server_help),
    path("backends/llama-cpp/version", backends.llama_server_version),
    path("backends/llama-cpp/devices", backends.llama_server_devices),
]

# Mounted at /llama-cpp/ (seed 003 puts them outside /api/v1).
llama_cpp_patterns = [
    *(path(f"<str:name>/{route}", view) for route, view in VIEWS.items()),
    re_path(r"^", route_not_found),
]
