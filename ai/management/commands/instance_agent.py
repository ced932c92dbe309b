"""`manage.py instance_agent`: this host's instance agent (ai.instances.agent)."""

import asyncio

from django.core.management.base import BaseCommand, CommandError

from ai.instances.agent import AgentError, run_agent


class Command(BaseCommand):
    help = (
        "Start, watch and stop the model server instances of this node (INSTANCE_NODE), "
        "serving the agent API on INSTANCE_AGENT_URL. SIGTERM or Ctrl-C stops them too."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--keep-children",
            action="store_true",
            help="On exit leave the instances running, for the next agent to re-adopt "
            "(a rolling restart of the agent).",
        )

    def handle(self, *, keep_children, **options):
        try:
            asyncio.run(run_agent(keep_children=keep_children))
        except AgentError as exc:
            raise CommandError(str(exc)) from exc
