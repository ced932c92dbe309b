"""How each backend runs: its command line, its readiness URL, the model name it answers to.

Pure functions of an Instance row (or anything with its fields): the agent runs
what ``command_line`` returns, the admin shows ``display_command``, the gateway
sends ``served_model_id`` as ``model``.
"""

from __future__ import annotations

import re
import shlex
import sys

from ..models import Backend

# Flags and variables whose value is a secret: never shown, never logged.
SECRET_NAME = re.compile(r"key|token|secret|passw|credential|auth", re.IGNORECASE)
MASK = "********"

READINESS_PATHS = {
    Backend.LLAMA_CPP: "/health",
    Backend.VLLM: "/health",
    Backend.MLX: "/v1/models",
    Backend.COMMAND: "/v1/models",
}
EXECUTABLES = {
    Backend.LLAMA_CPP: ["llama-server"],
    Backend.VLLM: ["vllm", "serve"],
    Backend.MLX: ["mlx_lm.server"],
}


class CommandError(ValueError):
    """The instance's options do not make a command line (an unbalanced quote, say)."""


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"The command cannot be parsed: {exc}.") from exc


def _optional(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _executable(instance) -> list[str]:
    override = instance.command_override.strip()
    return _split(override) if override else list(EXECUTABLES[instance.backend])


def command_line(instance, *, host: str, port: int | str) -> list[str]:
    """The argv that serves ``instance`` on ``host:port``."""
    if instance.backend == Backend.COMMAND:
        values = {
            "host": host,
            "port": str(port),
            "model": instance.model_path,
            "name": instance.name,
            "python": sys.executable,
        }
        template = _split(instance.command_override)
        try:
            return [arg.format_map(values) for arg in template]
        except (KeyError, IndexError, ValueError) as exc:
            raise CommandError(
                f"The command has an unknown placeholder {exc}; use {{host}}, {{port}}, "
                "{model}, {name} or {python}."
            ) from exc
    argv = _executable(instance)
    extra = list(instance.extra_args or ())
    if instance.backend == Backend.LLAMA_CPP:
        argv += ["-m", instance.model_path, "--host", host, "--port", str(port)]
        argv += _optional("-c", instance.context_size)
        argv += _optional("-ngl", instance.gpu_layers)
        argv += _optional("-t", instance.threads)
        argv += _optional("-np", instance.parallel)
    elif instance.backend == Backend.VLLM:
        argv += [instance.model_path, "--host", host, "--port", str(port)]
        argv += ["--served-model-name", instance.name]
        argv += _optional("--max-model-len", instance.context_size)
        argv += _optional("--max-num-seqs", instance.parallel)
    elif instance.backend == Backend.MLX:
        argv += ["--model", instance.model_path, "--host", host, "--port", str(port)]
    return argv + extra


def readiness_path(instance) -> str:
    """The path that answers 200 once the server can take requests."""
    return instance.readiness_path or READINESS_PATHS[instance.backend]


def served_model_id(instance) -> str:
    """What the server expects as ``model`` (mlx_lm.server loads whatever it is sent)."""
    return instance.model_path if instance.backend == Backend.MLX else instance.name


def masked(argv: list[str]) -> list[str]:
    """``argv`` with the value of every secret-looking flag replaced by a mask."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(MASK)
            hide_next = False
            continue
        flag, equals, _ = arg.partition("=")
        if arg.startswith("-") and SECRET_NAME.search(flag):
            if equals:
                shown.append(f"{flag}={MASK}")
            else:
                shown.append(arg)
                hide_next = True
            continue
        shown.append(arg)
    return shown


def masked_environment(environment: dict) -> dict:
    """The environment with secret-looking variables' values masked."""
    return {k: (MASK if SECRET_NAME.search(k) else v) for k, v in (environment or {}).items()}


def display_command(instance, *, host: str, port: int | None) -> str:
    """The command line an operator may read: secrets masked, the port shown if known."""
    try:
        argv = command_line(instance, host=host, port="{port}" if port is None else port)
    except CommandError as exc:
        return str(exc)
    return shlex.join(masked(argv))
