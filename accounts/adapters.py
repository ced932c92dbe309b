"""django-allauth's hooks: who may sign up, and where mail links point.

Sign-up is closed unless the site setting opens it (SiteSettings.allow_signup) or the
visitor holds an open organisation invitation (its token kept in the session by the
invitation page, orgs.views). SSO sign-in creates the account when the provider is
configured: an operator who adds an OpenID Connect provider trusts its users.
"""

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter

from panel.models import SiteSettings

# The session key under which the invitation page keeps the plain token it was opened with.
INVITATION_SESSION_KEY = "switchboard_invitation"


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request) -> bool:
        if SiteSettings.load().allow_signup:
            return True
        return bool(request.session.get(INVITATION_SESSION_KEY))


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request, sociallogin) -> bool:
        return True
