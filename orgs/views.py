"""Organisation pages (server-rendered) for their owners and admins, and invitations.

Tenancy: an organisation the user does not belong to is a 404 on every route; its admin
parts are a 404 for a plain member too. Services enforce the role rules again and raise;
their refusals come back as messages on the organisation's page, in its language (the
services mark theirs with gettext_noop).
"""

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop
from django.views.decorators.http import require_POST

from accounts.adapters import INVITATION_SESSION_KEY
from accounts.services import apikey_revoke
from panel.errors import ApiError

from . import selectors, services
from .forms import InvitationForm, RoleForm
from .models import Role

# What the inviter reads, whoever the address belongs to (or no one).
INVITATION_SENT = gettext_noop(
    "If this address can receive mail, an invitation is on its way to %(email)s."
)


def _organisation(request, slug: str):
    return get_object_or_404(selectors.organisations_for_user(request.user), slug=slug)


def _administered(request, slug: str):
    """The organisation when the user may run it; a 404 otherwise (also for a member)."""
    organisation = _organisation(request, slug)
    if not selectors.can_administer(request.user, organisation):
        raise Http404
    return organisation


def _back(organisation):
    return redirect("orgs:detail", slug=organisation.slug)


@login_required
def organisation_list(request):
    memberships = selectors.memberships_for_user(request.user)
    return render(request, "orgs/list.html", {"section": "orgs", "memberships": memberships})


@login_required
def organisation_detail(request, slug):
    organisation = _organisation(request, slug)
    if not selectors.can_administer(request.user, organisation):
        context = _context(request, organisation)
        return render(request, "orgs/member.html", context)
    return render(request, "orgs/detail.html", _admin_context(request, organisation))


def _context(request, organisation) -> dict:
    return {
        "section": "orgs",
        "organisation": organisation,
        "role": _role_label(selectors.organisation_role(request.user, organisation)),
    }


def _role_label(role: str | None) -> str | None:
    return Role(role).label if role else None


def _admin_context(request, organisation, invite_form=None) -> dict:
    wallet, ledger = selectors.organisation_wallet(organisation)
    return {
        **_context(request, organisation),
        "is_owner": selectors.can_own(request.user, organisation),
        "members": selectors.memberships_of(organisation),
        "invitations": selectors.invitations_pending(organisation),
        "invite_form": invite_form or InvitationForm(),
        "role_form": RoleForm(),
        "links": selectors.organisation_links(organisation),
        "keys": selectors.organisation_keys(organisation),
        "usage": selectors.organisation_usage_by_day(organisation),
        "wallet": wallet,
        "ledger": ledger,
    }


@login_required
@require_POST
def invite(request, slug):
    organisation = _administered(request, slug)
    form = InvitationForm(request.POST)
    if not form.is_valid():
        context = _admin_context(request, organisation, invite_form=form)
        return render(request, "orgs/detail.html", context, status=400)
    try:
        services.invitation_create(
            organisation=organisation,
            by=request.user,
            **form.cleaned_data,
            absolute_uri=request.build_absolute_uri,
        )
    except ApiError as error:
        messages.error(request, _(error.message))
    else:
        messages.success(request, _(INVITATION_SENT) % {"email": form.cleaned_data["email"]})
    return _back(organisation)


@login_required
@require_POST
def invitation_revoke(request, slug, pk):
    organisation = _administered(request, slug)
    invitation = get_object_or_404(organisation.invitations, pk=pk)
    try:
        services.invitation_revoke(invitation=invitation, by=request.user)
    except ApiError as error:
        messages.error(request, _(error.message))
    else:
        messages.success(
            request, _("The invitation of %(email)s is revoked.") % {"email": invitation.email}
        )
    return _back(organisation)


@login_required
@require_POST
def member_role(request, slug, pk):
    organisation = _administered(request, slug)
    membership = get_object_or_404(organisation.memberships.select_related("user"), pk=pk)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose one of the roles offered."))
        return _back(organisation)
    try:
        services.membership_role_set(
            membership=membership, role=form.cleaned_data["role"], by=request.user
        )
    except ApiError as error:
        messages.error(request, _(error.message))
    else:
        messages.success(
            request,
            _("%(user)s is now %(role)s.")
            % {
                "user": membership.user.username,
                "role": Role(form.cleaned_data["role"]).label.lower(),
            },
        )
    return _back(organisation)


@login_required
def member_remove(request, slug, pk):
    """GET asks for confirmation; POST removes."""
    organisation = _administered(request, slug)
    membership = get_object_or_404(organisation.memberships.select_related("user"), pk=pk)
    if request.method != "POST":
        context = {"section": "orgs", "organisation": organisation, "membership": membership}
        return render(request, "orgs/member_remove.html", context)
    try:
        services.membership_remove(membership=membership, by=request.user)
    except ApiError as error:
        messages.error(request, _(error.message))
    else:
        messages.success(request, _("%(user)s was removed.") % {"user": membership.user.username})
    if membership.user_id == request.user.id and membership.pk is None:
        return redirect("orgs:list")
    return _back(organisation)


@login_required
@require_POST
def key_revoke(request, slug, pk):
    organisation = _administered(request, slug)
    key = get_object_or_404(selectors.organisation_keys(organisation), pk=pk)
    apikey_revoke(key=key)
    messages.success(request, _("The key %(name)s is revoked.") % {"name": key.name})
    return _back(organisation)


def invitation(request, token):
    """The e-mailed link: accept when signed in, otherwise sign in or sign up first."""
    found = selectors.invitation_open_by_token(token)
    if found is None:
        if request.session.get(INVITATION_SESSION_KEY) == token:
            del request.session[INVITATION_SESSION_KEY]  # it no longer opens sign-up
        return render(request, "orgs/invitation_invalid.html", status=404)
    if not request.user.is_authenticated:
        request.session[INVITATION_SESSION_KEY] = token
        back = urlencode({"next": request.path})
        context = {"invitation": found, "next": back}
        return render(request, "orgs/invitation.html", context)
    if request.method == "POST":
        return _accept(request, token)
    return render(request, "orgs/invitation.html", {"invitation": found})


def _accept(request, token):
    try:
        membership = services.invitation_accept(token=token, user=request.user)
    except ApiError:
        return render(request, "orgs/invitation_invalid.html", status=404)
    request.session.pop(INVITATION_SESSION_KEY, None)
    messages.success(request, _("You joined %(name)s.") % {"name": membership.organisation.name})
    return redirect("orgs:detail", slug=membership.organisation.slug)
