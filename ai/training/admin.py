"""The admin's Training jobs and Trainers pages: status colours, progress, a loss chart,
the log tail and a Cancel action and button (``services.job_cancel``).

A job is started through the API (its checks and quotas live in ``services.job_start``),
so the page adds none and shows what the worker observed read-only. A trainer's
secret-looking environment variables are shown masked; a mask sent back keeps the value.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.templatetags.static import static
from django.utils.html import format_html, format_html_join, json_script
from django.utils.safestring import mark_safe

from panel.errors import ApiError

from ..instances.backends import MASK, masked_environment
from ..models import Trainer, TrainingJob, TrainingStatus
from . import selectors, services

STATUS_COLOURS = {
    TrainingStatus.QUEUED: "#6e7781",
    TrainingStatus.RUNNING: "#0969da",
    TrainingStatus.SUCCEEDED: "#1a7f37",
    TrainingStatus.FAILED: "#cf222e",
    TrainingStatus.CANCELLED: "#bf8700",
}
LOG_TAIL = 200
CANCEL = "_cancel_job"
CHART_JS = "vendor/chartjs/chart-4.6.1.umd.min.js"
LOSS_SCRIPT = mark_safe(
    'const d = JSON.parse(document.getElementById("loss-data").textContent);'
    'new Chart(document.getElementById("loss-chart"), {type: "line", data: '
    '{labels: d.steps, datasets: [{label: "loss", data: d.loss}]}});'
)

REQUEST_FIELDS = [
    "public_id",
    "organisation",
    "created_by",
    "base_model_name",
    "dataset",
    "validation_dataset",
    "trainer",
    "trainer_kind",
    "epochs",
    "hyperparameters",
    "suffix",
]
OBSERVED_FIELDS = [
    "worker",
    "pid",
    "heartbeat_at",
    "task_id",
    "upstream_job_id",
    "cancel_requested_at",
    "seconds_used",
    "created_at",
    "started_at",
    "finished_at",
]


def status_badge(status: str) -> str:
    label = TrainingStatus(status).label if status in TrainingStatus.values else status
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 6px;border-radius:8px">{}</span>',
        STATUS_COLOURS.get(status, "#6e7781"),
        label,
    )


def progress_text(job: TrainingJob) -> str:
    if not job.total_steps:
        return f"step {job.step}" if job.step else "-"
    return f"step {job.step}/{job.total_steps} ({100 * job.step // job.total_steps}%), epoch {job.epoch:g}"


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "status_colour",
        "base_model_name",
        "organisation",
        "trainer",
        "progress",
        "loss",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "trainer_kind", "trainer", "organisation"]
    search_fields = ["public_id", "base_model_name", "suffix", "error", "created_by__username"]
    list_select_related = ["organisation", "trainer"]
    actions = ["cancel"]
    fieldsets = [
        (None, {"fields": REQUEST_FIELDS}),
        (
            "Progress",
            {
                "fields": [
                    "status_colour",
                    "progress",
                    "metrics",
                    "loss_chart",
                    "error",
                    "cancel_button",
                ]
            },
        ),
        ("Worker", {"fields": OBSERVED_FIELDS}),
        (f"Log (last {LOG_TAIL} lines)", {"fields": ["log_tail"]}),
    ]
    readonly_fields = [
        *REQUEST_FIELDS,
        *OBSERVED_FIELDS,
        "status_colour",
        "progress",
        "metrics",
        "loss_chart",
        "error",
        "cancel_button",
        "log_tail",
    ]

    def has_add_permission(self, request):
        return False  # jobs start through the API, where their checks and quotas are

    @admin.display(description="status", ordering="status")
    def status_colour(self, obj):
        return status_badge(obj.status)

    @admin.display(description="progress")
    def progress(self, obj):
        return progress_text(obj)

    @admin.display(description="loss")
    def loss(self, obj):
        value = obj.metrics.get("loss")
        return f"{value:.4g}" if isinstance(value, int | float) else "-"

    @admin.display(description="loss chart")
    def loss_chart(self, obj):
        series = selectors.job_loss_series(job=obj)
        if not series:
            return "(no metrics yet)"
        data = {"steps": [step for step, _ in series], "loss": [loss for _, loss in series]}
        return format_html(
            '<div style="max-width:640px"><canvas id="loss-chart"></canvas></div>{}'
            '<script src="{}"></script><script>{}</script>',
            json_script(data, "loss-data"),
            static(CHART_JS),
            LOSS_SCRIPT,
        )

    @admin.display(description="")
    def cancel_button(self, obj):
        if obj.is_finished:
            return "-"
        label = "Cancel requested" if obj.cancel_requested_at else "Cancel this job"
        return format_html(
            '<button type="submit" name="{}" class="button"{}>{}</button>',
            CANCEL,
            " disabled" if obj.cancel_requested_at else "",
            label,
        )

    @admin.display(description="log")
    def log_tail(self, obj):
        lines = selectors.job_log_tail(job=obj, lines=LOG_TAIL)
        if not lines:
            return "(no log yet)"
        rows = format_html_join(
            "\n",
            "{} [{}] {}",
            ((e.created_at.strftime("%H:%M:%S"), e.level, e.message) for e in lines),
        )
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', rows)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST" and CANCEL in request.POST:
            job = self.get_object(request, object_id)
            if job is not None and self.has_change_permission(request, job):
                self._cancel_one(request, job)
                return HttpResponseRedirect(request.path)
        return super().change_view(request, object_id, form_url, extra_context)

    def _cancel_one(self, request, job: TrainingJob) -> bool:
        try:
            services.job_cancel(job=job, user=request.user)
        except ApiError as exc:
            self.message_user(request, f"{job.public_id}: {exc.message}", messages.ERROR)
            return False
        return True

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel(self, request, queryset):
        done = sum(self._cancel_one(request, job) for job in queryset)
        self.message_user(request, f"Cancelled or asked to cancel {done} job(s).")


class TrainerForm(forms.ModelForm):
    """Secret-looking environment values are shown masked and kept when sent back masked."""

    class Meta:
        model = Trainer
        fields = [
            "name",
            "kind",
            "command",
            "environment",
            "upstream",
            "options",
            "timeout_seconds",
            "is_default",
            "is_active",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["environment"] = masked_environment(self.instance.environment)

    def clean_environment(self):
        value = self.cleaned_data["environment"] or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise forms.ValidationError("An object of names and string values.")
        stored = self.instance.environment or {}
        return {k: stored[k] if v == MASK and k in stored else v for k, v in value.items()}

    def clean(self):
        cleaned = super().clean()
        kind, upstream, command = (cleaned.get(k) for k in ("kind", "upstream", "command"))
        if kind == "upstream" and upstream is None:
            self.add_error("upstream", "An upstream trainer needs its upstream.")
        if kind == "command" and not command:
            self.add_error("command", 'A command trainer needs its argument list, with "{config}".')
        if command and not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
            self.add_error("command", "A list of strings.")
        return cleaned


@admin.register(Trainer)
class TrainerAdmin(admin.ModelAdmin):
    form = TrainerForm
    list_display = ["name", "kind", "upstream", "is_default", "is_active", "created_at"]
    list_filter = ["kind", "is_default", "is_active"]
    search_fields = ["name"]
