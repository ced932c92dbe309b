"""`make run-prod`: the production topology on this machine, on PostgreSQL and Redis.

Migrates once, then becomes supervisord (panel.prod) in the foreground: N uvicorn web
processes on one shared socket, Celery workers, beat and the instance agent, each
restarted when it crashes. SIGTERM or Ctrl-C stops them all and exits 0.
"""

import argparse
import os
import shutil
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from ai.instances.nodes import node_ensure_local
from panel.prod import Topology, prod_conflict, prod_dir, prod_refusal, supervisord_config


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, not {value!r}")
    return number


class Command(BaseCommand):
    help = (
        "Run the production topology under supervisord: web processes on one port, "
        "Celery workers, beat and the instance agent, on PostgreSQL and Redis."
    )

    def add_arguments(self, parser):
        # String defaults go through `type`: a bad environment value is refused like a flag.
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=_positive, default=os.environ.get("PORT", "8000"))
        parser.add_argument(
            "--web-processes", type=_positive, default=os.environ.get("WEB_PROCESSES", "4")
        )
        parser.add_argument(
            "--workers", type=_positive, default=os.environ.get("CELERY_WORKERS", "2")
        )

    def handle(self, *, host, port, web_processes, workers, **options):
        topology = Topology(host, port, web_processes, workers)
        refusal = prod_refusal() or prod_conflict(topology)
        if refusal:
            raise CommandError(refusal, returncode=2)
        if settings.DEBUG:
            self.stderr.write("Warning: DEBUG is on; production runs with DEBUG off.")
        call_command("migrate", interactive=False, verbosity=options["verbosity"])
        # The agent started below is this host's node: its row says where and with which key.
        node_ensure_local(update=True)
        connections.close_all()
        config = self._write_config(topology)
        self.stdout.flush()
        self.stderr.flush()
        # supervisord takes this process over: signals reach it directly, and it exits 0
        # once every child has stopped.
        os.execv(
            sys.executable,
            [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", str(config)],
        )

    def _write_config(self, topology: Topology):
        here = prod_dir()
        (here / "logs").mkdir(parents=True, exist_ok=True)
        # With several web processes /metrics must sum them (prometheus-client's
        # multiprocess mode), from a folder emptied at each start.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics = here / "metrics"
            shutil.rmtree(metrics, ignore_errors=True)
            metrics.mkdir()
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        os.environ["PYTHONUNBUFFERED"] = "1"  # log lines reach stdout as they happen
        config = here / "supervisord.conf"
        config.write_text(supervisord_config(topology))
        return config
