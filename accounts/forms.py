"""The account pages' forms: a new API key, checked against what its owner may use."""

from django import forms
from django.utils import timezone

from orgs.models import Organisation

from .models import APIKey, Permission
from .selectors import models_usable_by


class KeyCreateForm(forms.Form):
    """A key of the signed-in user: the same scope rules as the management API's."""

    name = forms.CharField(max_length=APIKey._meta.get_field("name").max_length)
    permissions = forms.MultipleChoiceField(
        choices=Permission.choices,
        initial=[Permission.READ, Permission.PROXY],
        widget=forms.CheckboxSelectMultiple,
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires",
        help_text="UTC; empty: never.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
    )
    allowed_models = forms.ModelMultipleChoiceField(
        queryset=None,
        required=False,
        help_text="None ticked: every model you may use.",
        widget=forms.CheckboxSelectMultiple,
    )
    organisation = forms.ModelChoiceField(
        queryset=None,
        required=False,
        to_field_name="slug",
        empty_label="None (personal)",
        help_text="The key acts for this organisation.",
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
            raise forms.ValidationError("Must be in the future.")
        return moment
