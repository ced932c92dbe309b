"""The account pages' forms (a new API key, checked against what its owner may use), and
django-allauth's forms where ours differ (settings.ACCOUNT_FORMS)."""

from allauth.account import forms as allauth_forms
from django import forms
from django.core.validators import MaxLengthValidator
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from orgs.models import Organisation
from panel.db import MAX_ID

from .models import APIKey, Permission
from .selectors import models_usable_by


class ModelIdsField(forms.ModelMultipleChoiceField):
    """Model ids; one that cannot be a row's (past the database's integer range, say) is
    refused as invalid before any query, which SQLite would fail on with a 500."""

    def _check_values(self, value):
        for pk in value:
            try:
                is_id = 0 < int(pk) <= MAX_ID
            except (TypeError, ValueError):
                is_id = False
            if not is_id:
                raise forms.ValidationError(
                    self.error_messages["invalid_pk_value"],
                    code="invalid_pk_value",
                    params={"pk": pk},
                )
        return super()._check_values(value)


class SlugChoiceField(forms.ModelChoiceField):
    """A row by slug; a NUL names none (PostgreSQL refuses it in a parameter: a 500)."""

    def to_python(self, value):
        if isinstance(value, str) and "\x00" in value:
            raise forms.ValidationError(
                self.error_messages["invalid_choice"], code="invalid_choice"
            )
        return super().to_python(value)


class KeyCreateForm(forms.Form):
    """A key of the signed-in user: the same scope rules as the management API's."""

    name = forms.CharField(label=_("Name"), max_length=APIKey._meta.get_field("name").max_length)
    permissions = forms.MultipleChoiceField(
        label=_("Permissions"),
        choices=Permission.choices,
        initial=[Permission.READ, Permission.PROXY],
        widget=forms.CheckboxSelectMultiple,
    )
    expires_at = forms.DateTimeField(
        required=False,
        label=_("Expires"),
        help_text=_("UTC; empty: never."),
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
    )
    allowed_models = ModelIdsField(
        queryset=None,
        required=False,
        label=_("Allowed models"),
        help_text=_("None ticked: every model you may use."),
        widget=forms.CheckboxSelectMultiple,
    )
    organisation = SlugChoiceField(
        queryset=None,
        required=False,
        to_field_name="slug",
        label=_("Organisation"),
        empty_label=_("None (personal)"),
        help_text=_("The key acts for this organisation."),
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["allowed_models"].queryset = models_usable_by(user).order_by("name")
        self.fields["organisation"].queryset = Organisation.objects.filter(
            memberships__user=user
        ).order_by("name")

    def clean_expires_at(self):
        moment = self.cleaned_data["expires_at"]
        if moment is not None and moment <= timezone.now():
            raise forms.ValidationError(_("Must be in the future."))
        return moment


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
