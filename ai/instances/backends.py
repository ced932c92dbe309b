"""How each backend runs: its command line, its readiness URL, the model name it answers to.

Pure functions of an Instance row (or anything with its fields): the agent runs
what ``command_line`` returns, the admin shows ``display_command``, the gateway
sends ``served_model_id`` as ``model``. ``parse_command`` goes the other way, a
command line to an instance's options, through the same table of flags (SYNTAX).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Option:
    """An Instance field a backend flag sets: written as ``flag``, read in any spelling."""

    field: str
    flag: str
    aliases: tuple[str, ...] = ()

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)


@dataclass(frozen=True, slots=True)
class Syntax:
    """A backend's command line: its model argument and the options written after the address."""

    model: Option
    options: tuple[Option, ...]
    # Written as the first argument (vllm serve MODEL) rather than with its flag.
    is_model_positional: bool = False
    # Flags Switchboard writes itself: a parsed command's values for them are not kept.
    own_flags: tuple[str, ...] = ("--host",)


SYNTAX = {
    Backend.LLAMA_CPP: Syntax(
        model=Option("model_path", "-m", ("--model",)),
        options=(
            Option("context_size", "-c", ("--ctx-size",)),
            Option("gpu_layers", "-ngl", ("--gpu-layers", "--n-gpu-layers")),
            Option("threads", "-t", ("--threads",)),
            Option("parallel", "-np", ("--parallel",)),
        ),
    ),
    Backend.VLLM: Syntax(
        model=Option("model_path", "--model"),
        options=(
            Option("context_size", "--max-model-len"),
            Option("parallel", "--max-num-seqs"),
        ),
        is_model_positional=True,
        own_flags=("--host", "--served-model-name"),
    ),
    Backend.MLX: Syntax(model=Option("model_path", "--model"), options=()),
}
PORT_FLAG = "--port"
# Other ways a command may start the same server (the executable's file name counts).
MODULES = {
    Backend.VLLM: ("vllm.entrypoints.openai.api_server",),
    Backend.MLX: ("mlx_lm.server",),
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
    syntax = SYNTAX[instance.backend]
    argv = _executable(instance)
    if syntax.is_model_positional:
        argv.append(instance.model_path)
    else:
        argv += [syntax.model.flag, instance.model_path]
    argv += ["--host", host, PORT_FLAG, str(port)]
    if instance.backend == Backend.VLLM:
        argv += ["--served-model-name", instance.name]
    for option in syntax.options:
        argv += _optional(option.flag, getattr(instance, option.field))
    return argv + list(instance.extra_args or ())


def readiness_path(instance) -> str:
    """The path that answers 200 once the server can take requests."""
    return instance.readiness_path or READINESS_PATHS[instance.backend]


def served_model_id(instance) -> str:
    """What the server expects as ``model`` (mlx_lm.server loads whatever it is sent; a vLLM
    server of one LoRA adapter answers with the adapter under its name, the base under
    the instance's)."""
    if instance.backend == Backend.MLX:
        return instance.model_path
    adapter = lora_module(instance) if instance.backend == Backend.VLLM else None
    return adapter or instance.name


def lora_module(instance) -> str | None:
    """The name of the one LoRA adapter in ``--lora-modules NAME=PATH`` (a deployed
    fine-tune); None without one, or with several (the caller names one as ``model``)."""
    args = list(instance.extra_args or ())
    values = []
    for index, arg in enumerate(args):
        if arg == "--lora-modules":
            values += args[index + 1 : index + 2]
        elif arg.startswith("--lora-modules="):
            values.append(arg.partition("=")[2])
    if len(values) != 1 or "=" not in values[0]:
        return None
    return values[0].partition("=")[0] or None


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


# NAME=value words before the executable: the environment the command sets.
ASSIGNMENT = re.compile(r"\A([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.DOTALL)
PYTHON = re.compile(r"\Apython[0-9.]*\Z")


def parse_command(backend: str, text: str) -> dict:
    """The options of an instance that runs ``text``, a command line of ``backend``'s server.

    Instance fields: each flag of SYNTAX in its field, the port, every other argument
    in ``extra_args``, leading NAME=value words in ``environment``, and the executable
    in ``command_override`` when it is not the backend's own. Switchboard's own flags
    (--host; vLLM's --served-model-name: it serves the instance's name) are left out,
    and a value a field cannot hold ("-ngl all") stays in ``extra_args`` as written.
    Raises CommandError, for the user.
    """
    argv = _split(text.replace("\\\r\n", " ").replace("\\\n", " "))  # line continuations
    if not argv:
        raise CommandError("The command is empty.")
    environment = {}
    while argv and (assignment := ASSIGNMENT.match(argv[0])):
        environment[assignment[1]] = assignment[2]
        argv.pop(0)
    if not argv:
        raise CommandError("The command sets variables but runs no program.")
    executable, args = _split_executable(backend, argv)
    syntax = SYNTAX[backend]
    fields = {
        "backend": backend,
        "model_path": "",
        **{option.field: None for option in syntax.options},
        "port": None,
        "extra_args": [],
        "environment": environment,
        "command_override": "" if executable == EXECUTABLES[backend] else shlex.join(executable),
    }
    if syntax.is_model_positional and args and not args[0].startswith("-"):
        fields["model_path"] = args.pop(0)
    _parse_flags(backend, args, fields)
    return fields


def _split_executable(backend: str, argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` cut after the words that start ``backend``'s server."""
    default = EXECUTABLES[backend]
    name = os.path.basename(argv[0])
    count = 0
    if name == default[0] and argv[1 : len(default)] == default[1:]:
        count = len(default)
    elif PYTHON.match(name) and argv[1:2] == ["-m"] and argv[2:3]:
        count = 3 if argv[2] in MODULES.get(backend, ()) else 0
    if not count:
        expected = " or ".join(
            [shlex.join(default), *(f"python -m {m}" for m in MODULES.get(backend, ()))]
        )
        started = shlex.join(argv[: 3 if PYTHON.match(name) else 1])
        raise CommandError(
            f"This is not a command of {Backend(backend).label}: it starts with {started}, "
            f"not {expected}."
        )
    return argv[:count], argv[count:]


def _flag_fields(backend: str) -> dict[str, str | None]:
    """Each flag spelling the parser knows: the field it sets (None: one of ours, dropped)."""
    syntax = SYNTAX[backend]
    table: dict[str, str | None] = {flag: None for flag in syntax.own_flags}
    for option in (syntax.model, *syntax.options):
        table.update(dict.fromkeys(option.spellings, option.field))
    table[PORT_FLAG] = "port"
    return table


def _parse_flags(backend: str, args: list[str], fields: dict) -> None:
    table = _flag_fields(backend)
    extra = fields["extra_args"]
    i = 0
    while i < len(args):
        word = args[i]
        flag, equals, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if backend == Backend.VLLM and flag.startswith("--"):
            flag = "--" + flag[2:].replace("_", "-")  # vLLM takes --max_model_len too
        if flag not in table:
            extra.append(word)
            i += 1
            continue
        if equals:
            value, taken = inline, args[i : i + 1]
        elif i + 1 < len(args):
            value, taken = args[i + 1], args[i : i + 2]
        else:
            raise CommandError(f"{flag} needs a value.")
        i += len(taken)
        field = table[flag]
        if field == "model_path":
            fields[field] = value
        elif field == "port":
            fields[field] = _port(flag, value)
        elif field is not None:
            if value.isascii() and value.isdigit():
                fields[field] = int(value)
            else:
                extra.extend(taken)


def _port(flag: str, value: str) -> int:
    if value.isascii() and value.isdigit() and 1 <= int(value) <= 65535:
        return int(value)
    raise CommandError(f"{flag} needs a port number from 1 to 65535, not {value!r}.")
