"""The admin's Nodes page: where each node's agent answers, its key, and a "check agent" action.

The key is write-only: the page says whether one is set, never shows it, and an
empty key field on an existing node keeps the stored key.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from panel.errors import AgentUnavailable

from ..models import Instance, Node
from . import client, nodes


class NodeForm(forms.ModelForm):
    """A node's address and host; its key as a password input that never shows the value."""

    # Checked here rather than by URLField, which refuses a host name without a dot
    # (a compose or Kubernetes service name such as http://agent:9201).
    address = forms.CharField(
        max_length=500, help_text="The agent's base URL, e.g. http://10.0.0.5:9201."
    )
    api_key = forms.CharField(
        label="Agent key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="That agent's INSTANCE_AGENT_KEY. Stored encrypted and never shown; "
        "leave empty to keep the key that is set.",
    )

    class Meta:
        model = Node
        fields = [
            "name",
            "address",
            "api_key",
            "instance_host",
            "port_range",
            "max_running_instances",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["name"].disabled = True  # instances name their node

    def clean_address(self):
        address = self.cleaned_data["address"]
        try:
            nodes.address_check(address)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return address

    def _get_validation_exclusions(self):
        return {*super()._get_validation_exclusions(), "address"}

    def clean_api_key(self):
        key = self.cleaned_data["api_key"]
        if key:
            return key
        if self.instance.pk and self.instance.has_api_key:
            return self.instance.api_key
        raise forms.ValidationError("The agent refuses every call without its key.")

    def clean_port_range(self):
        text = self.cleaned_data["port_range"].strip()
        try:
            nodes.port_range_check(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return text


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    form = NodeForm
    actions = ["check_agent"]
    list_display = [
        "name",
        "shown_address",
        "instance_host",
        "port_range",
        "max_running_instances",
        "key_set",
    ]
    search_fields = ["name", "instance_host"]
    readonly_fields = ["key_set", "created_at", "updated_at"]
    fields = [
        "name",
        "address",
        "api_key",
        "key_set",
        "instance_host",
        "port_range",
        "max_running_instances",
        "created_at",
        "updated_at",
    ]

    @admin.display(description="address", ordering="address")
    def shown_address(self, obj):
        return nodes.shown_address(obj.address)

    @admin.display(description="key", boolean=False)
    def key_set(self, obj):
        return "key set" if obj.has_api_key else "no key"

    @admin.action(description="Check agent", permissions=["view"])
    def check_agent(self, request, queryset):
        for node in queryset:
            try:
                health = client.agent_health(node.name)
            except AgentUnavailable as exc:
                self.message_user(request, f"Node {node.name}: {exc.message}", messages.WARNING)
                continue
            if health.get("node") != node.name:
                self.message_user(
                    request,
                    f"Node {node.name}: the agent at this address serves node '{health.get('node')}'; "
                    f"start it with INSTANCE_NODE={node.name} or fix the address.",
                    messages.WARNING,
                )
                continue
            self.message_user(
                request,
                f"Node {node.name}: the agent answers (pid {health.get('pid')}, "
                f"{len(health.get('instances') or {})} instance(s)).",
            )

    def get_deleted_objects(self, objs, request):
        # Instances name their node: a node that still has some cannot go.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        names = [node.name for node in objs]
        for instance in Instance.objects.filter(node__in=names).order_by("name"):
            protected.append(f"Instance: {instance.name} (on node {instance.node})")
        return deleted, counts, perms_needed, protected
