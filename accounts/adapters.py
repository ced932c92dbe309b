"""django-allauth's hooks: who may sign up, and where mail links point.

Sign-up is closed unless the site setting opens it (SiteSettings.allow_signup) or the
visitor holds an open organisation invitation (its token kept in the session by the
invitation page, orgs.views). SSO sign-in creates the account when the provider is
configured: an operator who adds an OpenID Connect provider trusts its users. Accounts
an operator made sign in without confirming their address (accounts.stages).
"""

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter

from orgs.selectors import invitation_open_by_token
from panel.models import SiteSettings

# The session key under which the invitation page keeps the plain token it was opened with.
INVITATION_SESSION_KEY = "switchboard_invitation"

ALLAUTH_VERIFICATION = "allauth.account.stages.EmailVerificationStage"
OPERATOR_AWARE_VERIFICATION = "accounts.stages.EmailVerificationStage"


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request) -> bool:
        if SiteSettings.load().allow_signup:
            return True
        # Only an invitation that is still open: one revoked, used or expired since the
        # visitor opened its link opens nothing.
        token = request.session.get(INVITATION_SESSION_KEY)
        return isinstance(token, str) and invitation_open_by_token(token) is not None

    def get_login_stages(self) -> list[str]:
        """allauth's stages, with e-mail verification that lets an operator's accounts in
        (accounts.stages)."""
        return [
            OPERATOR_AWARE_VERIFICATION if path == ALLAUTH_VERIFICATION else path
            for path in super().get_login_stages()
        ]


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request, sociallogin) -> bool:
        return True


class MFAAdapter(DefaultMFAAdapter):
    def is_mfa_enabled(self, user, types=None) -> bool:
        """No second factor for a sign-in whose account was deleted after its password
        step (allauth then has no user: it raised a 500); its code page sends the
        visitor back to the sign-in page."""
        if user is None:
            return False
        return super().is_mfa_enabled(user, types)
