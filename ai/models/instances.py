"""Local model servers (seed 003's instances) that Switchboard starts, watches and stops.

The row holds two halves: what an operator asks for (backend, options, desired
state) and what the node's agent observed (status, pid, exit code, restarts).
Only the agent (``ai.instances.agent``) writes the observed half.
"""

import re

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from panel.fields import EncryptedTextField

# A DNS label: the name is used in URLs, log file names and host names.
NAME_PATTERN = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
NAME_RE = re.compile(rf"\A{NAME_PATTERN}\Z")
validate_instance_name = RegexValidator(
    NAME_RE,
    "Use 1 to 63 lower-case letters, digits and hyphens, starting and ending with a letter "
    "or digit.",
    code="invalid_name",
)
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


class Backend(models.TextChoices):
    LLAMA_CPP = "llama_cpp", "llama.cpp (llama-server)"
    VLLM = "vllm", "vLLM"
    MLX = "mlx", "MLX (mlx_lm.server)"
    COMMAND = "command", "Any command"


class InstanceStatus(models.TextChoices):
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    FAILED = "failed", "Failed"
    RESTARTING = "restarting", "Restarting"
    # Wanted running, but its node is full of busy instances: started when one frees.
    WAITING = "waiting", "Waiting for a free slot"
    # Being stopped for idleness or eviction: no new requests, in-flight ones finish.
    DRAINING = "draining", "Draining"


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


class Instance(models.Model):
    """A model server process on a node, served through the gateway as an upstream."""

    name = models.CharField(max_length=63, unique=True, validators=[validate_instance_name])
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.LLAMA_CPP)
    # Backend options: the structured ones each backend knows, then anything else.
    model_path = models.CharField(
        max_length=1000,
        blank=True,
        help_text="llama.cpp: the GGUF file (-m); vLLM: model name or path; MLX: --model.",
    )
    context_size = models.PositiveIntegerField(
        null=True, blank=True, help_text="llama.cpp -c, vLLM --max-model-len."
    )
    gpu_layers = models.PositiveIntegerField(null=True, blank=True, help_text="llama.cpp -ngl.")
    threads = models.PositiveIntegerField(null=True, blank=True, help_text="llama.cpp -t.")
    parallel = models.PositiveIntegerField(
        null=True, blank=True, help_text="llama.cpp -np, vLLM --max-num-seqs."
    )
    extra_args = models.JSONField(
        default=list, blank=True, help_text="More arguments, one list item each."
    )
    environment = models.JSONField(
        default=dict, blank=True, help_text="Environment variables for the process."
    )
    command_override = models.CharField(
        max_length=2000,
        blank=True,
        help_text="The executable to run instead of the backend's own (llama-server, vllm, "
        "mlx_lm.server); for the command backend, the whole command line, with {host}, "
        "{port} and {model} replaced.",
    )
    readiness_path = models.CharField(
        max_length=200,
        blank=True,
        help_text="Polled until it answers 200; empty: the backend's own (/health, /v1/models).",
    )
    node = models.CharField(max_length=63, default="local", validators=[validate_instance_name])
    port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1024), MaxValueValidator(65535)],
        help_text="Empty: a free port of the node's range, chosen at the first start.",
    )
    auto_restart = models.BooleanField(default=True)
    max_restarts = models.PositiveIntegerField(default=3)
    restart_delay = models.PositiveIntegerField(default=5, help_text="Seconds.")
    ready_timeout = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(1)],
        help_text="Seconds a start may take before it counts as failed.",
    )
    on_demand_start = models.BooleanField(default=False)
    idle_timeout = models.PositiveIntegerField(null=True, blank=True, help_text="Minutes.")
    organisation = models.ForeignKey(
        "orgs.Organisation",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="instances",
        help_text="The owner; empty: the operator's.",
    )
    desired_state = models.CharField(
        max_length=20, choices=DesiredState.choices, default=DesiredState.STOPPED
    )
    # A restart asked for at this time: the agent restarts a process started before it.
    restart_requested_at = models.DateTimeField(null=True, blank=True)
    # Observed by the agent.
    status = models.CharField(
        max_length=20, choices=InstanceStatus.choices, default=InstanceStatus.STOPPED
    )
    status_reason = models.TextField(blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    # The process's start time in clock ticks since boot (/proc/PID/stat): a pid
    # reused by another program does not match it.
    pid_started = models.PositiveBigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    # The port the running process listens on: ``port``, or one of the node's range
    # given at start and freed (cleared) when it stops.
    assigned_port = models.PositiveIntegerField(null=True, blank=True)
    # Written by the gateway (ai.instances.activity), never by an operator: when a
    # request last used the instance (refreshed while requests are in flight), and the
    # highest link priority among those requests (eviction goes lowest first).
    last_request_at = models.DateTimeField(null=True, blank=True)
    last_request_priority = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # What an operator edits (the admin form and the API both use these).
    OPTION_FIELDS = (
        "backend",
        "model_path",
        "context_size",
        "gpu_layers",
        "threads",
        "parallel",
        "extra_args",
        "environment",
        "command_override",
        "readiness_path",
        "node",
        "port",
        "auto_restart",
        "max_restarts",
        "restart_delay",
        "ready_timeout",
        "on_demand_start",
        "idle_timeout",
        "organisation",
    )
    OBSERVED_FIELDS = (
        "status",
        "status_reason",
        "pid",
        "pid_started",
        "started_at",
        "ready_at",
        "exit_code",
        "restart_count",
        "assigned_port",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "port"], condition=Q(port__isnull=False), name="instance_port_free"
            ),
            models.UniqueConstraint(
                fields=["node", "assigned_port"],
                condition=Q(assigned_port__isnull=False),
                name="instance_assigned_port_free",
            ),
        ]

    def __str__(self):
        return self.name

    def clean(self):
        errors = {}
        if not isinstance(self.extra_args, list) or not all(
            isinstance(a, str) for a in self.extra_args
        ):
            errors["extra_args"] = "Extra arguments must be a list of strings."
        if not isinstance(self.environment, dict) or not all(
            isinstance(k, str) and ENV_NAME_RE.match(k) and isinstance(v, str) and "\0" not in v
            for k, v in self.environment.items()
        ):
            errors["environment"] = "The environment must map variable names to strings."
        if self.backend == Backend.COMMAND and not self.command_override.strip():
            errors["command_override"] = "The command backend needs a command."
        elif self.backend != Backend.COMMAND and not self.model_path.strip():
            errors["model_path"] = "This backend needs a model."
        if self.readiness_path and not self.readiness_path.startswith("/"):
            errors["readiness_path"] = "Start the path with /."
        if errors:
            raise ValidationError(errors)

    @property
    def is_active(self) -> bool:
        """A process exists or is wanted: starting, running, restarting or draining."""
        return self.status in (
            InstanceStatus.STARTING,
            InstanceStatus.RUNNING,
            InstanceStatus.RESTARTING,
            InstanceStatus.DRAINING,
        )


class Node(models.Model):
    """A host that runs an instance agent (``manage.py instance_agent``).

    Web processes and Celery reach the agent at ``address`` with ``api_key`` (the
    agent's INSTANCE_AGENT_KEY); the node's instances answer at ``instance_host``.
    """

    name = models.CharField(max_length=63, unique=True, validators=[validate_instance_name])
    address = models.URLField(
        max_length=500, help_text="The agent's base URL, e.g. http://10.0.0.5:9201."
    )
    api_key = EncryptedTextField(
        blank=True, default="", help_text="The agent's key; stored encrypted, never shown."
    )
    instance_host = models.CharField(
        max_length=255, help_text="The host name or address at which its instances answer."
    )
    port_range = models.CharField(
        max_length=20, blank=True, help_text='"first-last"; empty: INSTANCE_PORT_RANGE.'
    )
    max_running_instances = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: INSTANCE_MAX_RUNNING (0: no limit)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key)
