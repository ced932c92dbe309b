"""The end user's account pages (server-rendered): keys, usage, quota, wallet, organisations."""

from django.urls import path

from . import views

app_name = "account"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("keys/", views.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate/", views.key_rotate, name="key-rotate"),
    path("usage/", views.usage, name="usage"),
    path("quota/", views.quota, name="quota"),
    path("wallet/", views.wallet, name="wallet"),
]
