"""Organisation pages for owners and admins, and the invitation link an invitee opens."""

from django.urls import path

from . import views

app_name = "orgs"

urlpatterns = [
    path("", views.organisation_list, name="list"),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
    path("<slug:slug>/", views.organisation_detail, name="detail"),
    path("<slug:slug>/invitations/new/", views.invite, name="invite"),
    path(
        "<slug:slug>/invitations/<int:pk>/revoke/",
        views.invitation_revoke,
        name="invitation-revoke",
    ),
    path("<slug:slug>/members/<int:pk>/role/", views.member_role, name="member-role"),
    path("<slug:slug>/members/<int:pk>/remove/", views.member_remove, name="member-remove"),
    path("<slug:slug>/keys/<int:pk>/revoke/", views.key_revoke, name="key-revoke"),
]
