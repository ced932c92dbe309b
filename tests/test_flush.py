"""The suite's flush after a transactional test (tests/conftest.py): DELETEs on PostgreSQL."""

import pytest
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection

from ai.models import UsageEvent
from orgs.models import Membership
from tests.conftest import _deleting_sql_flush

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_empties_rows_that_refer_to_each_other_and_keeps_what_post_migrate_makes(acme):
    from django.contrib.auth.models import Permission
    from django.contrib.sites.models import Site

    assert Membership.objects.exists()  # rows pointing at users and an organisation

    call_command("flush", verbosity=0, interactive=False, reset_sequences=False)

    assert not Membership.objects.exists() and not UsageEvent.objects.exists()
    assert Permission.objects.exists()
    assert Site.objects.get(pk=1).name == "Switchboard"


def test_on_postgresql_it_deletes_from_every_table_and_leaves_the_rest_to_django():
    from django.core.management.commands import flush

    assert flush.sql_flush is _deleting_sql_flush  # what the tests' teardown calls
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    statements = _deleting_sql_flush(no_style(), connection, reset_sequences=False)
    if connection.vendor != "postgresql":
        assert not any("DELETE FROM" in s and "DEFERRED" in s for s in statements)
        return
    [sql] = statements
    assert sql.startswith("SET CONSTRAINTS ALL DEFERRED;")
    assert sql.count("DELETE FROM") == len(tables) and "TRUNCATE" not in sql
    assert "TRUNCATE" in " ".join(_deleting_sql_flush(no_style(), connection, True))
