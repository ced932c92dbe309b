"""Starting one server process: its port, its environment, its session and log.

The child gets a session (and so a process group) of its own: it is stopped as
one group, and neither the agent's death nor a Ctrl-C in the agent's terminal
reaches it. It writes its log file itself, so it keeps logging without the agent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from django.conf import settings

from ..models import Instance
from . import logs, procs

# What a model server gets of the agent's environment: the host's own settings
# (paths, locale, accelerators, thread pools, model caches, proxies), never
# Switchboard's configuration: its secrets (the database password, the agent key)
# and its HOST and PORT, which servers such as llama-cpp-python's read as their
# own. INSTANCE_PASS_ENV names more; an instance's own environment may set anything.
PASSED_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
        "TERM", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONPATH", "SSL_CERT_FILE",
        "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
        "http_proxy", "https_proxy", "no_proxy",
    }
)  # fmt: skip
PASSED_PREFIXES = (
    "LC_", "XDG_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "HSA_", "OMP_", "MKL_", "OPENBLAS_",
    "GGML_", "LLAMA_", "VLLM_", "MLX_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH",
)  # fmt: skip


class CannotStart(Exception):
    """No process could be started; the message says why, for the row's status_reason."""


def host_environment() -> dict[str, str]:
    """The host's part of this process's environment (no Switchboard setting)."""
    extra = set(settings.INSTANCE_PASS_ENV)
    return {
        name: value
        for name, value in os.environ.items()
        if name in PASSED_NAMES or name.startswith(PASSED_PREFIXES) or name in extra
    }


def child_environment(instance: Instance) -> dict[str, str]:
    """The host's part of the agent's environment, plus the instance's own."""
    return {**host_environment(), **(instance.environment or {})}


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


def assign_port(instance: Instance, *, node: str, host: str, ports: range) -> int:
    """The port ``instance`` runs on this time, saved as its assigned_port: its own
    ``port``, else a free one of ``ports`` that no other row of the node holds and no
    other program listens on. The database keeps assigned ports unique per node."""
    from django.db import IntegrityError

    if instance.port is not None:
        if not procs.port_is_free(host, instance.port):
            raise CannotStart(f"port {instance.port} on {host} is in use by another program")
        choices = [instance.port]
    else:
        held = Instance.objects.filter(node=node).exclude(pk=instance.pk)
        taken = {
            port
            for pair in held.values_list("port", "assigned_port")
            for port in pair
            if port is not None
        }
        choices = (p for p in ports if p not in taken and procs.port_is_free(host, p))
    for port in choices:
        try:
            Instance.objects.filter(pk=instance.pk).update(assigned_port=port)
        except IntegrityError:
            continue  # another row took it meanwhile
        instance.assigned_port = port
        return port
    if instance.port is not None:
        raise CannotStart(f"port {instance.port} is assigned to another instance of node {node}")
    raise CannotStart(f"no free port in {ports.start}-{ports.stop - 1} on {host}")
