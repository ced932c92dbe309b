"""The admin's Instances page: status colours, start/stop/restart, the command line and logs.

Secrets never reach the page: the environment, the extra arguments and the
command are shown masked, and a mask sent back unchanged keeps the stored value
(``services._unmasked``). Every write goes through the services, which nudge the agent.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html

from panel.errors import AgentUnavailable, InstanceQuotaExceeded

from ..models import DesiredState, Instance, InstanceStatus
from . import backends, client, nodes, quotas, services

STATUS_COLOURS = {
    InstanceStatus.RUNNING: "#1a7f37",
    InstanceStatus.STARTING: "#0969da",
    InstanceStatus.RESTARTING: "#bf8700",
    InstanceStatus.FAILED: "#cf222e",
    InstanceStatus.STOPPED: "#6e7781",
    InstanceStatus.WAITING: "#8250df",
    InstanceStatus.DRAINING: "#bf8700",
}
LOG_LINES = 50


def status_badge(status: str) -> str:
    label = InstanceStatus(status).label if status in InstanceStatus.values else status
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 6px;border-radius:8px">{}</span>',
        STATUS_COLOURS.get(status, "#6e7781"),
        label,
    )


def uptime(instance: Instance) -> str:
    """How long the instance has been up, as "2d 3h 04m"; "-" when it is not."""
    since = instance.ready_at or instance.started_at
    if not instance.is_active or since is None:
        return "-"
    minutes = int((timezone.now() - since) / timedelta(minutes=1))
    days, minutes = divmod(max(minutes, 0), 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days}d {hours}h {minutes:02d}m" if days else f"{hours}h {minutes:02d}m"


class InstanceForm(forms.ModelForm):
    """The operator's options; secret values are shown masked and kept when left masked."""

    class Meta:
        model = Instance
        fields = ["name", *Instance.OPTION_FIELDS]
        help_texts = {
            "environment": "Secret-looking variables are shown masked; leave the mask to keep "
            "the stored value.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = self.instance.organisation_id
        if self.instance.pk:
            self.fields["name"].disabled = True
            self.initial["environment"] = backends.masked_environment(self.instance.environment)
            self.initial["extra_args"] = backends.masked(list(self.instance.extra_args or ()))
            if self.instance.command_override:
                self.initial["command_override"] = services.masked_command(
                    self.instance.command_override
                )

    def clean_node(self):
        node = self.cleaned_data["node"]
        nodes.node_check(node)
        return node

    def _post_clean(self):
        super()._post_clean()
        try:
            backends.command_line(self.instance, host="127.0.0.1", port=0)
        except backends.CommandError as exc:
            field = "command_override" if self.instance.command_override else "extra_args"
            self.add_error(field, str(exc))
        is_new = self.instance.pk is None
        if is_new or self.instance.organisation_id != self.owner:
            # A new instance starts; a moved one keeps its desired state.
            is_running = is_new or self.instance.desired_state == DesiredState.RUNNING
            refusal = quotas.refusal(self.instance, is_new_owner=True, is_starting=is_running)
            if refusal:
                self.add_error(None, refusal)


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    form = InstanceForm
    actions = ["start", "stop", "restart"]
    list_display = [
        "name",
        "status_colour",
        "desired_state",
        "backend",
        "node",
        "port",
        "restart_count",
        "uptime",
    ]
    list_filter = ["status", "desired_state", "backend", "node", "on_demand_start"]
    search_fields = ["name", "model_path", "status_reason"]
    readonly_fields = [
        "status_colour",
        "desired_state",
        "status_reason",
        "pid",
        "started_at",
        "ready_at",
        "exit_code",
        "restart_count",
        "uptime",
        "assigned_port",
        "command",
        "recent_log",
    ]
    fieldsets = [
        (None, {"fields": ["name", "backend", "model_path", "node", "port", "organisation"]}),
        (
            "Backend options",
            {"fields": ["context_size", "gpu_layers", "threads", "parallel", "extra_args"]},
        ),
        ("Process", {"fields": ["command_override", "environment", "readiness_path"]}),
        (
            "Lifecycle",
            {
                "fields": [
                    "auto_restart",
                    "max_restarts",
                    "restart_delay",
                    "ready_timeout",
                    "on_demand_start",
                    "idle_timeout",
                ]
            },
        ),
    ]
    state_fieldsets = [
        (
            "State (observed by the agent)",
            {
                "fields": [
                    "status_colour",
                    "desired_state",
                    "status_reason",
                    "uptime",
                    "restart_count",
                    "assigned_port",
                    "pid",
                    "started_at",
                    "ready_at",
                    "exit_code",
                    "command",
                    "recent_log",
                ]
            },
        ),
    ]

    def get_fieldsets(self, request, obj=None):
        return self.state_fieldsets + self.fieldsets if obj else self.fieldsets

    @admin.display(description="status", ordering="status")
    def status_colour(self, obj):
        return status_badge(obj.status)

    @admin.display(description="uptime")
    def uptime(self, obj):
        return uptime(obj)

    @admin.display(description="command line (secrets masked)")
    def command(self, obj):
        host = client.instance_address(obj.node) or "{host}"
        return format_html(
            "<code>{}</code>",
            backends.display_command(obj, host=host, port=obj.assigned_port or obj.port),
        )

    @admin.display(description=f"last {LOG_LINES} log lines")
    def recent_log(self, obj):
        try:
            text = client.agent_logs(obj.node, obj.name, LOG_LINES)
        except AgentUnavailable as exc:
            return f"The agent is not answering: {exc.message}"
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', text or "(no log yet)")

    def save_model(self, request, obj, form, change):
        options = {
            name: form.cleaned_data[name]
            for name in (form.changed_data if change else Instance.OPTION_FIELDS)
            if name in services.WRITABLE and name in form.cleaned_data
        }
        if change:
            saved = services.instance_update(instance=obj, options=options)
        else:
            saved = services.instance_create(name=obj.name, options=options)
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        services.instance_delete(instance=obj)

    def delete_queryset(self, request, queryset):
        for instance in queryset:
            services.instance_delete(instance=instance)

    def _act(self, request, queryset, service, verb: str) -> None:
        silent = []
        for instance in queryset:
            try:
                if service(instance=instance).agent_answered is False:
                    silent.append(instance.name)
            except InstanceQuotaExceeded as exc:
                self.message_user(request, f"{instance.name}: {exc.message}", messages.ERROR)
        self.message_user(request, f"Asked {len(queryset)} instance(s) to {verb}.")
        if silent:
            self.message_user(
                request,
                f"The agent is not answering for {', '.join(silent)}: the change is saved and "
                "will be applied when it is back.",
                messages.WARNING,
            )

    @admin.action(description="Start", permissions=["change"])
    def start(self, request, queryset):
        self._act(request, queryset, services.instance_start, "start")

    @admin.action(description="Stop", permissions=["change"])
    def stop(self, request, queryset):
        self._act(request, queryset, services.instance_stop, "stop")

    @admin.action(description="Restart", permissions=["change"])
    def restart(self, request, queryset):
        self._act(request, queryset, services.instance_restart, "restart")
