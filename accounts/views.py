"""The end user's account pages (server-rendered, the chat page's look).

Every page shows the signed-in user's own things only, even to staff: their keys, their
usage, their wallet. The plain text of a new or rotated key is kept in the session for
the one page that follows the POST (post/redirect/get), then forgotten.
"""

from datetime import UTC, datetime, timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from redis.exceptions import RedisError

from ai.selectors.account import own_key_quota, own_quota, own_usage
from orgs.models import LedgerEntry, Membership, Role, Wallet
from panel.db import MAX_ID
from panel.errors import KeyRevoked

from .forms import KeyCreateForm
from .selectors import apikeys_for_user
from .services import apikey_create, apikey_revoke, apikey_rotate

PLAIN_KEY_SESSION_KEY = "account_plain_key"
USAGE_PERIODS = (7, 30, 90)
LEDGER_PAGE_SIZE = 25


def _own_keys(user, *, include_revoked: bool = True):
    # apikeys_for_user gives staff every key; these pages are about the user's own.
    return apikeys_for_user(user, include_revoked=include_revoked).filter(user=user)


def _own_key(user, key_id: int):
    # An id past the database's integer range names no key (and must not reach the query).
    if key_id > MAX_ID:
        raise Http404
    return get_object_or_404(_own_keys(user), pk=key_id)


def _own_wallet(user) -> Wallet:
    # Read, not wallet_for: a page view creates no wallet (nor the audit entry a new row
    # gets); a user without one sees the empty wallet wallet_for would create.
    return Wallet.objects.filter(user=user).first() or Wallet(user=user)


def _month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@login_required
def overview(request):
    user, now = request.user, timezone.now()
    keys = list(_own_keys(user).values_list("is_revoked", "expires_at"))
    context = {
        "section": "overview",
        "wallet": _own_wallet(user),
        "memberships": Membership.objects.filter(user=user)
        .select_related("organisation")
        .order_by("organisation__name"),
        "live_keys": sum(1 for revoked, ends in keys if not revoked and (not ends or ends > now)),
        "all_keys": len(keys),
        "month": own_usage(user=user, start=_month_start(now), end=now),
    }
    return render(request, "accounts/overview.html", context)


@login_required
@never_cache  # the page may hold a plain key: no copy of it in any cache
@require_http_methods(["GET", "POST"])
def keys(request):
    form = KeyCreateForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        key, plain = apikey_create(user=request.user, **form.cleaned_data)
        return _show_once(request, plain, _("Key “%(name)s” created.") % {"name": key.name})
    context = {
        "section": "keys",
        "keys": _own_keys(request.user).order_by("-created_at", "-id"),
        "form": form,
        "plain_key": request.session.pop(PLAIN_KEY_SESSION_KEY, None),
        "now": timezone.now(),
    }
    return render(request, "accounts/keys.html", context, status=400 if form.errors else 200)


def _show_once(request, plain: str, message: str):
    request.session[PLAIN_KEY_SESSION_KEY] = plain
    messages.success(request, message)
    return redirect("account:keys")


@login_required
@require_http_methods(["GET", "POST"])
def key_revoke(request, key_id: int):
    key = _own_key(request.user, key_id)
    if request.method == "POST":
        apikey_revoke(key=key)
        messages.success(request, _("Key “%(name)s” revoked.") % {"name": key.name})
        return redirect("account:keys")
    return render(request, "accounts/key_confirm.html", {"section": "keys", "key": key})


@login_required
@require_http_methods(["GET", "POST"])
def key_rotate(request, key_id: int):
    key = _own_key(request.user, key_id)
    if request.method == "POST":
        try:
            key, plain = apikey_rotate(key=key)
        except KeyRevoked:
            messages.error(
                request, _("Key “%(name)s” is revoked; it cannot be rotated.") % {"name": key.name}
            )
            return redirect("account:keys")
        return _show_once(request, plain, _("Key “%(name)s” rotated.") % {"name": key.name})
    context = {"section": "keys", "key": key, "is_rotation": True}
    return render(request, "accounts/key_confirm.html", context)


def _period(value: str | None) -> int:
    return int(value) if value in {str(days) for days in USAGE_PERIODS} else 30


@login_required
def usage(request):
    days, now = _period(request.GET.get("days")), timezone.now()
    data = own_usage(user=request.user, start=now - timedelta(days=days - 1), end=now)
    chart = {
        "labels": [day.isoformat() for day in data.days],
        "requests": [data.daily[d].requests if d in data.daily else 0 for d in data.days],
        "tokens": [data.daily[d].total_tokens if d in data.daily else 0 for d in data.days],
        "cost": [float(data.daily[d].cost) if d in data.daily else 0 for d in data.days],
    }
    context = {
        "section": "usage",
        "days": days,
        "periods": USAGE_PERIODS,
        "data": data,
        "chart": chart,
    }
    return render(request, "accounts/usage.html", context)


@login_required
def quota(request):
    user = request.user
    try:
        context = {
            "section": "quota",
            "quotas": own_quota(user=user),
            "key_quotas": own_key_quota(user=user),
        }
    except RedisError:
        # The counters live in Redis: while it is away the page says so, not a 500.
        context = {"section": "quota", "counters_unavailable": True}
        return render(request, "accounts/quota.html", context, status=503)
    return render(request, "accounts/quota.html", context)


@login_required
def wallet(request):
    user = request.user
    own = _own_wallet(user)
    entries = LedgerEntry.objects.filter(wallet__user=user).order_by("-created_at", "-id")
    page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    administered = Membership.objects.filter(user=user, role__in=[Role.OWNER, Role.ADMIN])
    org_wallets = {
        w.organisation_id: w
        for w in Wallet.objects.filter(organisation_id__in=administered.values("organisation_id"))
    }
    orgs = [
        (m.organisation, org_wallets.get(m.organisation_id))
        for m in administered.select_related("organisation").order_by("organisation__name")
    ]
    context = {"section": "wallet", "wallet": own, "page": page, "org_wallets": orgs}
    return render(request, "accounts/wallet.html", context)
