from allauth.account import views as account_views
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from django.views.i18n import JavaScriptCatalog, set_language
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import sso
from ai.admin_dashboard import usage_dashboard
from ai.api import health
from ai.api.instances.urls import llama_cpp_patterns
from ai.api.urls import (
    anthropic_patterns,
    botserver_patterns,
    dataset_patterns,
    openai_patterns,
    panel_patterns,
)
from ai.views import chat_page
from panel import api as panel_api
from panel import errors, views

urlpatterns = [
    path("admin/usage/", admin.site.admin_view(usage_dashboard), name="usage-dashboard"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/chat/", permanent=False)),
    path("chat/", chat_page, name="chat"),
    path("i18n/setlang/", set_language, name="set_language"),
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
    # django-allauth's pages (sign-in, sign-up, password reset, e-mail, MFA, SSO), with
    # the names the chat page and LOGIN_URL already use; then the account pages.
    path("accounts/login/", account_views.login, name="login"),
    path("accounts/logout/", account_views.logout, name="logout"),
    # OpenID Connect's two routes, in front of allauth's own (accounts/sso.py says why).
    path("accounts/oidc/<str:provider_id>/login/", sso.login, name="openid_connect_login"),
    path(
        "accounts/oidc/<str:provider_id>/login/callback/",
        sso.callback,
        name="openid_connect_callback",
    ),
    path("accounts/", include("allauth.urls")),
    path("accounts/", include("accounts.urls")),
    path("accounts/orgs/", include("orgs.urls")),
    path("v1/", include(openai_patterns)),
    # The management API (DRF) comes before the gateway's routes that share its prefixes.
    path("api/v1/ai/", include("ai.api.manage.urls")),
    path("api/v1/ai/", include(dataset_patterns)),
    path("api/v1/", include("ai.api.instances.urls")),
    path("llama-cpp/", include(llama_cpp_patterns)),
    path("api/v1/", include("accounts.api.urls")),
    path("api/v1/", include("orgs.api.urls")),
    path("api/v1/config", panel_api.ConfigView.as_view(), name="api-config"),
    path("api/v1/version", panel_api.VersionView.as_view(), name="api-version"),
    path("api/v1/audit-events", panel_api.AuditEventList.as_view(), name="api-audit-events"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/ai/", include(botserver_patterns)),
    path("api/v1/", include(openai_patterns)),
    path("api/ai/openai/v1/", include(openai_patterns)),
    # Seed 000 tells SDK users to set the base URL to /api/ai/openai, without /v1.
    path("api/ai/openai/", include(openai_patterns)),
    # The Anthropic SDK's base URL http://host/api/ai/anthropic (or http://host, or .../api).
    path("api/ai/anthropic/v1/", include(anthropic_patterns)),
    path("api/ai/", include(panel_patterns)),
    path("api/status", views.api_status, name="api-status"),
    path("api/deployments/<int:model_id>/health", health.deployment),
    path("api/deployments/<int:model_id>/upstreams/<int:upstream_id>/health", health.deployment),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("metrics", views.metrics),
    # Last: every other API path answers the JSON 404, whatever DEBUG says.
    re_path(r"^(?:api|v1)/", errors.api_route_not_found),
]

handler400 = "panel.errors.handler400"
handler403 = "panel.errors.handler403"
handler404 = "panel.errors.handler404"
handler500 = "panel.errors.handler500"
