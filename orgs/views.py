"""Organisation pages (server-rendered) for their owners and admins, and invitations."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def organisation_list(request):
    return render(request, "accounts/overview.html", {"section": "orgs"})
