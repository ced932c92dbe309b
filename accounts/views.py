"""The end user's account pages (server-rendered, the chat page's look)."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def overview(request):
    return render(request, "accounts/overview.html", {"section": "overview"})


@login_required
def keys(request):
    return render(request, "accounts/overview.html", {"section": "keys"})


@login_required
def usage(request):
    return render(request, "accounts/overview.html", {"section": "usage"})


@login_required
def quota(request):
    return render(request, "accounts/overview.html", {"section": "quota"})


@login_required
def wallet(request):
    return render(request, "accounts/overview.html", {"section": "wallet"})
