"""Organisation pages for owners and admins, and the invitation link an invitee opens."""

from django.urls import path

from . import views

app_name = "orgs"

urlpatterns = [
    path("", views.organisation_list, name="list"),
]
