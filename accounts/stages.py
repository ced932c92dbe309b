"""The e-mail verification step of django-allauth's sign-in, with the operator's word.

Accounts that django-allauth made (sign-up, SSO) carry an e-mail address row, confirmed
or not, and go through its verification as configured (ACCOUNT_EMAIL_VERIFICATION).
An operator vouches for the accounts it makes: the admin's form and admin_ensure
(`make run`) record the address as verified, and so did migration 0007 for every
account made before allauth. Two kinds are let in here, their address recorded as
verified (services.user_email_vouch): a superuser (only an operator makes one:
createsuperuser) and an account with no address row at all (made in code or the shell;
allauth records one for each account it makes).
"""

from allauth.account import stages

from .services import user_email_vouch, user_is_operator_made


class EmailVerificationStage(stages.EmailVerificationStage):
    def handle(self):
        user = self.login.user
        if user is not None and user_is_operator_made(user=user):
            user_email_vouch(user=user)
            return None, True
        return super().handle()
