"""Seed 003's instance.Instance and instance.Options, with llamactl's backend fields.

Input is strict: an unknown field, a string where a number belongs or a number out
of range is a 400, never a silent coercion. Output masks secrets: the values of
secret-looking environment variables and of secret flags in the arguments.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orgs.models import Organisation
from panel.serializers import KnownFieldsOnly, StrictIntegerField

from ...instances import backends
from ...instances.nodes import instance_hosts
from ...instances.selectors import registered_model
from ...instances.services import masked_command
from ...models import Backend, Instance, InstanceStatus
from ...models.instances import DesiredState

DAY = 24 * 60 * 60


class StrictBooleanField(serializers.BooleanField):
    """true or false, nothing else."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictCharField(serializers.CharField):
    """A JSON string (DRF would turn a number into one); no NUL character."""

    default_error_messages = {"nul": "The value must not contain a NUL character."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        if "\0" in data:
            self.fail("nul")
        return super().to_internal_value(data)


class StrictSerializer(KnownFieldsOnly, serializers.Serializer):
    """Refuses fields it does not know."""


def _int(low: int, high: int, **kwargs) -> StrictIntegerField:
    return StrictIntegerField(min_value=low, max_value=high, required=False, **kwargs)


class BackendOptionsSerializer(StrictSerializer):
    """llamactl's backend_options: what the backend's command line is built from."""

    model = StrictCharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        help_text="llama.cpp: the GGUF file (-m); vLLM: model name or path; MLX: --model.",
    )
    context_size = _int(1, 10_000_000, allow_null=True, help_text="llama.cpp -c.")
    gpu_layers = _int(0, 100_000, allow_null=True, help_text="llama.cpp -ngl.")
    threads = _int(1, 4096, allow_null=True, help_text="llama.cpp -t.")
    parallel = _int(1, 4096, allow_null=True, help_text="llama.cpp -np, vLLM --max-num-seqs.")
    extra_args = serializers.ListField(
        child=StrictCharField(max_length=4000, allow_blank=True, trim_whitespace=False),
        max_length=200,
        required=False,
        help_text="More arguments, one item each; secret flags' values are masked on output.",
    )


class InstanceOptionsSerializer(StrictSerializer):
    """seed 003's instance.Options plus llamactl's backend fields, node and port."""

    auto_restart = StrictBooleanField(required=False)
    command_override = StrictCharField(max_length=2000, required=False, allow_blank=True)
    docker_enabled = StrictBooleanField(
        required=False, help_text="Accepted as false only: instances run as processes."
    )
    environment = serializers.DictField(
        child=StrictCharField(max_length=10_000, allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="Secret-looking variables' values are masked on output.",
    )
    idle_timeout = _int(1, 365 * 24 * 60, allow_null=True, help_text="Minutes.")
    max_restarts = _int(0, 1000)
    on_demand_start = StrictBooleanField(required=False)
    restart_delay = _int(0, DAY, help_text="Seconds.")
    backend_type = serializers.ChoiceField(choices=Backend.choices, required=False)
    backend_options = BackendOptionsSerializer(required=False)
    readiness_path = StrictCharField(max_length=200, required=False, allow_blank=True)
    ready_timeout = _int(1, DAY, help_text="Seconds.")
    node = StrictCharField(max_length=63, required=False)
    port = _int(1024, 65535, allow_null=True)
    organisation = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Organisation.objects.all(),
        required=False,
        allow_null=True,
        help_text="The owner's slug (its instance quotas apply); null: the operator's.",
    )

    def validate_environment(self, environment):
        if len(environment) > 200:
            raise serializers.ValidationError("At most 200 variables.")
        return environment

    def validate_docker_enabled(self, value):
        if value:
            raise serializers.ValidationError(
                "Instances run as processes: docker is not supported."
            )
        return value

    def to_options(self) -> dict:
        """The validated input as Instance fields."""
        data = dict(self.validated_data)
        data.pop("docker_enabled", None)
        data.pop("model", None)
        data.pop("priority", None)
        if "backend_type" in data:
            data["backend"] = data.pop("backend_type")
        backend_options = data.pop("backend_options", {})
        if "model" in backend_options:
            data["model_path"] = backend_options.pop("model")
        return {**data, **backend_options}


class InstanceWriteSerializer(InstanceOptionsSerializer):
    """The options, and the model to serve the instance as (created when new)."""

    model = StrictCharField(
        max_length=200,
        required=False,
        allow_null=True,
        help_text="Serve the instance through the gateway as this model (created if new).",
    )
    priority = _int(0, 1_000_000, help_text="The upstream's priority in that model.")


def options_of(instance: Instance) -> dict:
    """An instance's options as the API shows them: secrets masked."""
    return {
        "auto_restart": instance.auto_restart,
        "command_override": masked_command(instance.command_override)
        if instance.command_override
        else "",
        "environment": backends.masked_environment(instance.environment),
        "idle_timeout": instance.idle_timeout,
        "max_restarts": instance.max_restarts,
        "on_demand_start": instance.on_demand_start,
        "restart_delay": instance.restart_delay,
        "backend_type": instance.backend,
        "backend_options": {
            "model": instance.model_path,
            "context_size": instance.context_size,
            "gpu_layers": instance.gpu_layers,
            "threads": instance.threads,
            "parallel": instance.parallel,
            "extra_args": backends.masked(list(instance.extra_args or ())),
        },
        "readiness_path": instance.readiness_path,
        "ready_timeout": instance.ready_timeout,
        "node": instance.node,
        "port": instance.port,
        "organisation": instance.organisation.slug if instance.organisation else None,
    }


class InstanceSerializer(serializers.Serializer):
    """seed 003's instance.Instance (name, created, id) with its state and options."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    created = serializers.SerializerMethodField()
    status = serializers.ChoiceField(choices=InstanceStatus.choices)
    desired_state = serializers.ChoiceField(choices=DesiredState.choices)
    status_reason = serializers.CharField()
    node = serializers.CharField()
    port = serializers.IntegerField(allow_null=True)
    assigned_port = serializers.IntegerField(
        allow_null=True, help_text="The port it runs on now: its own, or one of its node's range."
    )
    pid = serializers.IntegerField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    ready_at = serializers.DateTimeField(allow_null=True)
    exit_code = serializers.IntegerField(allow_null=True)
    restart_count = serializers.IntegerField()
    model = serializers.SerializerMethodField()
    command = serializers.SerializerMethodField()
    options = serializers.SerializerMethodField()

    def get_created(self, instance) -> int:
        """Unix timestamp when the instance was created."""
        return int(instance.created_at.timestamp())

    def get_model(self, instance) -> str | None:
        """The public model name the gateway serves it as, if registered."""
        return registered_model(instance)

    def get_command(self, instance) -> str:
        """The command line it runs (secrets masked)."""
        # The nodes' hosts are read once for a whole list (the context is the list's).
        hosts = self.context.get("instance_hosts")
        if hosts is None:
            hosts = self.context["instance_hosts"] = instance_hosts()
        host = hosts.get(instance.node, "{host}")
        return backends.display_command(
            instance, host=host, port=instance.assigned_port or instance.port
        )

    @extend_schema_field(InstanceOptionsSerializer)
    def get_options(self, instance) -> dict:
        return options_of(instance)
