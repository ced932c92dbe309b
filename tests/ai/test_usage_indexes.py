"""The usage events' indexes (issue 20): what the reads need, nothing every write pays for alone.

Each request's UsageEvent wrote eleven indexes; five (user, organisation, link, key and
upstream alone) were read by nothing. ai/migrations/0021 drops them (concurrently on
PostgreSQL) and makes them again when unapplied. Runs on both databases.
"""

import pytest
from django.core.management import call_command
from django.db import connection

from ai.models import UsageEvent
from tests.factories import UsageEventFactory

# What reads the table: the rollup and retention (created_at, the id), the reconciler
# (request_id), the admin's model filter, and per-user, organisation and link reports by time.
KEPT = {
    ("created_at",),
    ("request_id",),
    ("model_id",),
    ("user_id", "created_at"),
    ("organisation_id", "created_at"),
    ("link_id", "created_at"),
}
DROPPED = {("user_id",), ("organisation_id",), ("link_id",), ("api_key_id",), ("upstream_id",)}


def _indexes() -> set[tuple[str, ...]]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, UsageEvent._meta.db_table)
    return {
        tuple(info["columns"])
        for info in constraints.values()
        if info["index"] and not info["primary_key"]
    }


@pytest.mark.django_db
def test_usage_events_keep_only_the_indexes_something_reads():
    assert _indexes() == KEPT


@pytest.mark.django_db(transaction=True)
def test_the_migration_goes_back_and_forth_and_keeps_the_rows():
    event = UsageEventFactory()
    try:
        call_command("migrate", "ai", "0020", verbosity=0)
        assert _indexes() == KEPT | DROPPED
        assert UsageEvent.objects.filter(pk=event.pk).exists()
        # A second unapply finds them there: IF NOT EXISTS, not an error.
        call_command("migrate", "ai", "0021", verbosity=0)
        call_command("migrate", "ai", "0020", verbosity=0)
        assert _indexes() == KEPT | DROPPED
    finally:
        call_command("migrate", "ai", verbosity=0)
    assert _indexes() == KEPT
    assert UsageEvent.objects.get(pk=event.pk).request_id == event.request_id
