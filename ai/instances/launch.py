"""Starting one server process: its port, its environment, its session and log.

The child gets a session (and so a process group) of its own: it is stopped as
one group, and neither the agent's death nor a Ctrl-C in the agent's terminal
reaches it. It writes its log file itself, so it keeps logging without the agent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..models import Instance
from . import logs, procs

# Switchboard's own secrets are not the model server's business: a command
# instance must not read the database password or the agent key from its
# environment. An instance's own environment may still set any of them.
PRIVATE_VARIABLES = (
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
    "INSTANCE_AGENT_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "METRICS_TOKEN",
)


class CannotStart(Exception):
    """No process could be started; the message says why, for the row's status_reason."""


def child_environment(instance: Instance) -> dict[str, str]:
    """The agent's environment without Switchboard's secrets, plus the instance's own."""
    inherited = {k: v for k, v in os.environ.items() if k not in PRIVATE_VARIABLES}
    return {**inherited, **(instance.environment or {})}


def spawn(instance: Instance, argv: list[str], log_dir: Path) -> subprocess.Popen:
    """Run ``argv`` for ``instance`` in a session of its own, its output to its log."""
    if not argv:
        raise CannotStart("the command is empty")
    with logs.open_for_child(log_dir, instance.name) as log:
        try:
            return subprocess.Popen(
                argv,
                env=child_environment(instance),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CannotStart(f"executable not found: {argv[0]}") from exc


def claim_port(instance: Instance, *, node: str, host: str, ports: range) -> int | None:
    """A free port of ``ports``, saved on the row (the database keeps it unique per node)."""
    from django.db import IntegrityError

    taken = set(
        Instance.objects.filter(node=node, port__isnull=False)
        .exclude(pk=instance.pk)
        .values_list("port", flat=True)
    )
    for port in ports:
        if port in taken or not procs.port_is_free(host, port):
            continue
        try:
            saved = Instance.objects.filter(pk=instance.pk, port__isnull=True).update(port=port)
        except IntegrityError:
            continue  # another row took it meanwhile
        if not saved:  # given a port meanwhile (or deleted: then nothing is started)
            port = Instance.objects.filter(pk=instance.pk).values_list("port", flat=True).first()
        instance.port = port
        return port
    return None
