"""``manage.py usage_rollup [--rebuild]``: bring the usage rollups up to date now."""

from django.core.management.base import BaseCommand

from ai.services import usage_rollup


class Command(BaseCommand):
    help = (
        "Roll up the usage events that arrived since the last run (what Celery beat does "
        "every USAGE_ROLLUP_INTERVAL); --rebuild recomputes every day that still has raw events."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--rebuild", action="store_true", help="recompute every rollup from the raw events"
        )

    def handle(self, *args, rebuild: bool, **options):
        written = usage_rollup(rebuild=rebuild)
        self.stdout.write(f"{written} hourly rollup rows written")
