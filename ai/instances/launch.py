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


def child_environment(instance: Instance) -> dict[str, str]:
    """The agent's environment without Switchboard's secrets, plus the instance's own."""
    inherited = {k: v for k, v in os.environ.items() if k not in PRIVATE_VARIABLES}
    return {**inherited, **(instance.environment or {})}


def spawn(instance: Instance, argv: list[str], log_dir: Path) -> subprocess.Popen:
    """Run ``argv`` for ``instance``; FileNotFoundError or PermissionError when it cannot."""
    if not argv:
        raise FileNotFoundError("empty command")
    with logs.open_for_child(log_dir, instance.name) as log:
        return subprocess.Popen(
            argv,
            env=child_environment(instance),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


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
        if not saved:
            return None  # the row was deleted or given a port meanwhile: next poll
        instance.port = port
        return port
    return None
