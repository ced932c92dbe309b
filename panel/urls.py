from django.contrib import admin
from django.urls import include, path

from ai.admin import usage_dashboard
from ai.api import health
from ai.api.urls import botserver_patterns, openai_patterns, panel_patterns
from panel import views

urlpatterns = [
    path("admin/usage/", admin.site.admin_view(usage_dashboard), name="usage-dashboard"),
    path("admin/", admin.site.urls),
    path("v1/", include(openai_patterns)),
    path("api/v1/ai/", include(botserver_patterns)),
    path("api/v1/", include(openai_patterns)),
    path("api/ai/openai/v1/", include(openai_patterns)),
    path("api/ai/", include(panel_patterns)),
    path("api/status", views.api_status, name="api-status"),
    path("api/deployments/<int:model_id>/health", health.deployment),
    path("api/deployments/<int:model_id>/upstreams/<int:upstream_id>/health", health.deployment),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("metrics", views.metrics),
]

handler400 = "panel.errors.handler400"
handler403 = "panel.errors.handler403"
handler404 = "panel.errors.handler404"
handler500 = "panel.errors.handler500"
