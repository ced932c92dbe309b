"""The production topology on one machine (`make run-prod`), as a supervisord config.

supervisord (PyPI ``supervisor``) runs every process and restarts the ones that
crash: N uvicorn web processes sharing one listening socket that supervisord
opens (``[fcgi-program:web]``, uvicorn ``--fd 0``, the arrangement uvicorn's
deployment docs show), Celery workers, one beat and this host's instance agent.
Stopping supervisord stops them in the reverse order of ``priority``: web first
(it drains), then beat, the workers (they finish their tasks) and the agent last
(it stops the local instances it runs).
"""

from __future__ import annotations

import math
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from panel.http import uvicorn_args

# Seconds supervisord waits after SIGTERM before SIGKILL, per program.
WEB_STOP_WAIT = 30
WORKER_STOP_WAIT = 60  # Celery's warm shutdown lets the tasks in hand finish


@dataclass(frozen=True, slots=True)
class Topology:
    """What serve_prod runs: where web listens and how many of each process."""

    host: str
    port: int
    web_processes: int
    workers: int


def prod_dir() -> Path:
    """Where serve_prod keeps its config, control socket and beat schedule."""
    return Path(settings.DATA_DIR) / "prod"


def prod_refusal() -> str:
    """Why production cannot start with these settings ("" when it can)."""
    missing = []
    if "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        missing.append("DATABASE_URL naming PostgreSQL (postgres://...)")
    if not settings.REDIS_URL:
        missing.append("REDIS_URL")
    if not missing:
        return ""
    return (
        f"serve_prod needs {' and '.join(missing)}: the production topology runs on "
        "PostgreSQL and Redis (`make run` is the embedded one)."
    )


def prod_conflict(topology: Topology) -> str:
    """Why this topology cannot start beside what already runs here ("" when it can)."""
    control = prod_dir() / "supervisor.sock"
    if control.exists() and _answers(socket.AF_UNIX, str(control)):
        return (
            f"serve_prod already runs with this DATA_DIR (its control socket {control} "
            "answers): stop it first, or use another DATA_DIR."
        )
    # supervisord would start anyway and leave the web processes failing.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((topology.host, topology.port))
        except OSError as exc:
            return f"Cannot listen on {topology.host}:{topology.port}: {exc.strerror or exc}."
    return ""


def _answers(family: int, address: str) -> bool:
    with socket.socket(family) as probe:
        return probe.connect_ex(address) == 0


def supervisord_config(topology: Topology) -> str:
    """The supervisord config (INI) of the whole topology."""
    here = prod_dir()
    sections = [
        _section(
            "supervisord",
            nodaemon="true",
            # In the foreground supervisord writes its lines to stdout as well as to this
            # file (rotated); every child's lines go to stdout (below).
            logfile=here / "logs" / "supervisord.log",
            pidfile=here / "supervisord.pid",
            childlogdir=here / "logs",
            identifier="switchboard",
        ),
        _section("unix_http_server", file=here / "supervisor.sock", chmod="0700"),
        _section(
            "rpcinterface:supervisor",
            **{"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"},
        ),
        _section("supervisorctl", serverurl=f"unix://{here / 'supervisor.sock'}"),
        _web(topology),
        *(_worker(number) for number in range(topology.workers)),
        _program(
            "beat",
            _python("-m", "celery", "-A", "panel", "beat", "-l", "info")
            + ["-s", str(here / "celerybeat-schedule")],
            priority=300,
        ),
        _program(
            "agent",
            _python(str(settings.BASE_DIR / "manage.py"), "instance_agent"),
            priority=100,
            # It stops each of its instances within INSTANCE_STOP_GRACE first.
            stopwaitsecs=10 + math.ceil(settings.INSTANCE_STOP_GRACE),
        ),
    ]
    header = "; Written by `manage.py serve_prod` at each start: edits here are overwritten.\n"
    return header + "\n".join(sections)


def _web(topology: Topology) -> str:
    # The production server arguments (panel.http), on the socket supervisord made: it
    # stays open while a web process restarts, so the port keeps answering.
    return _program(
        "web",
        _python("-m", "uvicorn", *uvicorn_args(fd=0)),
        kind="fcgi-program",
        socket=f"tcp://{topology.host}:{topology.port}",
        numprocs=topology.web_processes,
        process_name="web-%(process_num)d",
        priority=400,
        stopwaitsecs=WEB_STOP_WAIT,
    )


def _worker(number: int) -> str:
    return _program(
        f"worker-{number}",
        _python("-m", "celery", "-A", "panel", "worker", "-l", "info")
        # Celery's default queue and the training jobs' (as `make run`'s worker).
        + ["-Q", f"celery,{settings.TRAINING_QUEUE}", "-n", f"worker-{number}@%h"],
        priority=200,
        stopwaitsecs=WORKER_STOP_WAIT,
    )


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _program(name: str, command: list[str], *, kind: str = "program", **options) -> str:
    return _section(
        f"{kind}:{name}",
        command=_literal(shlex.join(command)),
        directory=settings.BASE_DIR,
        autorestart="true",
        stopsignal="TERM",
        # A child whose TERM timed out is killed with the processes it started.
        killasgroup="true",
        redirect_stderr="true",
        stdout_logfile="/dev/stdout",
        stdout_logfile_maxbytes="0",
        **options,
    )


def _section(title: str, **options) -> str:
    lines = [f"[{title}]"]
    for key, value in options.items():
        if isinstance(value, Path):
            value = _literal(str(value))
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _literal(value: str) -> str:
    """supervisord expands %(name)s in its values: a literal % is written %%."""
    return value.replace("%", "%%")
