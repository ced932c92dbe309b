"""Writes to instances: what an operator asks for (options, desired state), never what the agent saw.

Every write commits, then nudges the node's agent so it acts now rather than at its
next poll. The nudge's answer is kept on the returned row as ``agent_answered``
(None while the transaction has not committed yet): a False means the change is
saved and waits for the agent, which reads the database when it is back.
"""

from __future__ import annotations

import shlex

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs.models import Organisation
from panel.errors import InstanceQuotaExceeded

from ..models import AIModel, DesiredState, Instance, ModelKind, Upstream
from . import backends, client, nodes, quotas

# Options a write may set: the operator's half of the row.
WRITABLE = frozenset(Instance.OPTION_FIELDS)


def _nudge_on_commit(instance: Instance) -> None:
    instance.agent_answered = None
    node = instance.node

    def nudge() -> None:
        instance.agent_answered = client.agent_nudge(node)

    transaction.on_commit(nudge)


def _unmasked(current: Instance, options: dict) -> dict:
    """``options`` with masked values sent back unchanged replaced by the stored secrets.

    What the API and the admin show is masked; a client that edits one field and
    sends the rest back must not overwrite a secret with the mask.
    """
    options = dict(options)
    if isinstance(options.get("environment"), dict):
        stored = current.environment or {}
        options["environment"] = {
            name: stored[name] if value == backends.MASK and name in stored else value
            for name, value in options["environment"].items()
        }
    stored_args = list(current.extra_args or ())
    if options.get("extra_args") == backends.masked(stored_args) and stored_args:
        options["extra_args"] = stored_args
    stored_command = current.command_override
    if stored_command and options.get("command_override") == masked_command(stored_command):
        options["command_override"] = stored_command
    return options


def masked_command(command: str) -> str:
    """A command override as it may be shown: secret flags' values masked."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return backends.MASK
    shown = backends.masked(argv)
    # Unchanged when nothing is secret: shlex.join would quote the {port} placeholders.
    return command if shown == argv else shlex.join(shown)


def _apply(instance: Instance, options: dict) -> None:
    unknown = set(options) - WRITABLE
    if unknown:
        raise ValidationError(f"Unknown instance options: {', '.join(sorted(unknown))}.")
    for name, value in options.items():
        setattr(instance, name, value)
    instance.full_clean()
    try:
        nodes.node_check(instance.node)
    except ValidationError as exc:
        raise ValidationError({"node": exc.messages}) from exc
    try:
        backends.command_line(instance, host="127.0.0.1", port=instance.port or 0)
    except backends.CommandError as exc:
        field = "command_override" if instance.command_override else "extra_args"
        raise ValidationError({field: str(exc)}) from exc


def _check_quotas(instance: Instance, *, is_new_owner: bool, is_starting: bool) -> None:
    if instance.organisation_id is not None:
        # Its row is locked until commit: concurrent creates and starts count one by one.
        organisations = Organisation.objects.select_for_update()
        instance.organisation = organisations.get(pk=instance.organisation_id)
    refusal = quotas.refusal(instance, is_new_owner=is_new_owner, is_starting=is_starting)
    if refusal:
        raise InstanceQuotaExceeded(refusal)


def _register(instance: Instance, *, model: str | None, priority: int | None) -> None:
    """Serve ``instance`` as an upstream of the model named ``model`` (created if new)."""
    served = backends.served_model_id(instance)
    # The model name the server answers to may follow the options (MLX: the model path).
    for upstream in instance.upstreams.exclude(provider_model_id=served):
        upstream.provider_model_id = served
        upstream.save(update_fields=["provider_model_id", "updated_at"])
    if not model:
        return
    ai_model = AIModel.objects.filter(name=model).first()
    if ai_model is None:
        ai_model = AIModel(name=model, kind=ModelKind.CHAT)
        ai_model.full_clean()
        ai_model.save()
    upstream = Upstream.objects.filter(model=ai_model, instance=instance).first()
    if upstream is None:
        upstream = Upstream(
            model=ai_model,
            name=instance.name,
            instance=instance,
            base_url="",
            provider_model_id=served,
            priority=priority or 0,
        )
    elif priority is not None:
        upstream.priority = priority
    else:
        return
    upstream.full_clean()
    upstream.save()


def instance_create(
    *,
    name: str,
    options: dict,
    model: str | None = None,
    priority: int | None = None,
    start: bool = True,
) -> Instance:
    """Create an instance (started unless ``start`` is False), optionally served as ``model``."""
    with transaction.atomic():
        instance = Instance(name=name)
        if start:
            instance.desired_state = DesiredState.RUNNING
        _apply(instance, options)
        _check_quotas(instance, is_new_owner=True, is_starting=start)
        try:
            with transaction.atomic():
                instance.save()
        except IntegrityError as exc:
            # Another request took the name or the port between full_clean and save.
            raise ValidationError("An instance with this name or port exists.") from exc
        _register(instance, model=model, priority=priority)
        _nudge_on_commit(instance)
    return instance


def instance_update(
    *,
    instance: Instance,
    options: dict,
    model: str | None = None,
    priority: int | None = None,
) -> Instance:
    """Change an instance's options; a running one is restarted so that they apply."""
    with transaction.atomic():
        instance = Instance.objects.select_for_update().get(pk=instance.pk)
        options = _unmasked(instance, options)
        is_changed = any(getattr(instance, name, None) != value for name, value in options.items())
        owner = instance.organisation_id
        _apply(instance, options)
        if instance.organisation_id != owner:
            is_running = instance.desired_state == DesiredState.RUNNING
            _check_quotas(instance, is_new_owner=True, is_starting=is_running)
        if is_changed and instance.desired_state == DesiredState.RUNNING:
            instance.restart_requested_at = timezone.now()
        instance.save()
        _register(instance, model=model, priority=priority)
        _nudge_on_commit(instance)
    return instance


def _set_state(instance: Instance, **fields) -> Instance:
    with transaction.atomic():
        instance = Instance.objects.select_for_update().get(pk=instance.pk)
        if (
            fields.get("desired_state") == DesiredState.RUNNING
            and instance.desired_state != DesiredState.RUNNING
        ):
            _check_quotas(instance, is_new_owner=False, is_starting=True)
        for name, value in fields.items():
            setattr(instance, name, value)
        instance.save(update_fields=[*fields, "updated_at"])
        _nudge_on_commit(instance)
    return instance


def instance_start(*, instance: Instance) -> Instance:
    """Ask for the instance to run; a manual start forgets earlier crashes."""
    return _set_state(instance, desired_state=DesiredState.RUNNING, restart_count=0)


def instance_stop(*, instance: Instance) -> Instance:
    """Ask for the instance to stop."""
    return _set_state(instance, desired_state=DesiredState.STOPPED)


def instance_restart(*, instance: Instance) -> Instance:
    """Ask for the instance to run on a fresh process (started if it was stopped)."""
    return _set_state(
        instance,
        desired_state=DesiredState.RUNNING,
        restart_requested_at=timezone.now(),
    )


def instance_delete(*, instance: Instance) -> Instance:
    """Remove the instance and its upstreams; the agent stops a process whose row is gone."""
    with transaction.atomic():
        instance.delete()
        _nudge_on_commit(instance)
    return instance
