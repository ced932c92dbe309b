"""django-allauth's forms where ours differ (settings.ACCOUNT_FORMS)."""

from allauth.account import forms as allauth_forms
from django.core.validators import MaxLengthValidator

# The longest username or e-mail address (RFC 5321's 254, as EmailField's default).
LOGIN_MAX_LENGTH = 254


class LoginForm(allauth_forms.LoginForm):
    """allauth's sign-in form, its "username or e-mail" field bounded: without a limit a
    huge value reached the database as a LIKE pattern SQLite refuses (a 500)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["login"]
        field.max_length = LOGIN_MAX_LENGTH
        field.validators.append(MaxLengthValidator(LOGIN_MAX_LENGTH))
        field.widget.attrs.update(maxlength=str(LOGIN_MAX_LENGTH), autocomplete="username")
