"""The suite's flush after a transactional test (tests/conftest.py): what post_migrate made is
kept when untouched, and PostgreSQL is emptied with DELETEs."""

import weakref

import pytest
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection
from django.db.models.signals import post_migrate

from ai.models import UsageEvent
from orgs.models import Membership
from tests.conftest import POST_MIGRATE_TABLES, _deleting_sql_flush, _emit_post_migrate

pytestmark = pytest.mark.django_db(transaction=True)


def _flush() -> None:
    call_command("flush", verbosity=0, interactive=False, reset_sequences=False)


@pytest.fixture
def signals():
    """The post_migrate signals sent (one call a receiving app)."""
    sent = []

    def receiver(**kwargs):
        sent.append(kwargs["app_config"].label)

    post_migrate.connect(receiver, dispatch_uid="test_flush")
    yield sent
    post_migrate.disconnect(dispatch_uid="test_flush")


def test_it_empties_rows_that_refer_to_each_other_and_keeps_what_post_migrate_makes(acme):
    from django.contrib.auth.models import Permission
    from django.contrib.sites.models import Site

    assert Membership.objects.exists()  # rows pointing at users and an organisation

    _flush()

    assert not Membership.objects.exists() and not UsageEvent.objects.exists()
    assert Permission.objects.exists()
    assert Site.objects.get(pk=1).name == "Switchboard"


def test_untouched_post_migrate_rows_are_kept_and_no_signal_is_sent(acme, signals):
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    _flush()  # whatever the tests before left: after it, the signal's rows
    before = (list(Permission.objects.values_list("pk", "codename")), ContentType.objects.count())
    del signals[:]
    acme.save()

    _flush()

    assert signals == [] and not Membership.objects.exists()
    after = (list(Permission.objects.values_list("pk", "codename")), ContentType.objects.count())
    assert after == before  # the same rows, not made again


def test_a_test_that_changed_them_gets_djangos_flush_and_the_signal(signals):
    from django.contrib.auth.models import Permission
    from django.contrib.sites.models import Site

    _flush()
    count = Permission.objects.count()
    Permission.objects.filter(codename="view_usageevent").delete()
    Site.objects.filter(pk=1).update(name="renamed by a test")
    del signals[:]

    _flush()

    assert "auth" in signals and "contenttypes" in signals
    assert Permission.objects.count() == count
    assert Permission.objects.filter(codename="view_usageevent").exists()
    assert Site.objects.get(pk=1).name == "Switchboard"


def test_a_flush_that_resets_sequences_is_djangos(signals):
    _flush()
    del signals[:]
    call_command("flush", verbosity=0, interactive=False, reset_sequences=True)
    assert "auth" in signals


def test_the_teardown_flush_is_this_one_and_deletes_from_every_other_table():
    from django.core.management.commands import flush

    # What the tests' teardown calls.
    assert flush.sql_flush is _deleting_sql_flush
    assert flush.emit_post_migrate_signal is _emit_post_migrate
    _flush()  # so the post_migrate tables are as the signal left them: kept
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    others = [table for table in tables if table not in POST_MIGRATE_TABLES]
    statements = _deleting_sql_flush(no_style(), connection, reset_sequences=False)
    joined = " ".join(statements)
    assert joined.count("DELETE FROM") == len(others) == len(tables) - len(POST_MIGRATE_TABLES)
    assert not any(table in joined for table in POST_MIGRATE_TABLES)
    if connection.vendor == "postgresql":
        [sql] = statements
        assert sql.startswith("SET CONSTRAINTS ALL DEFERRED;") and "TRUNCATE" not in sql
        assert "TRUNCATE" in " ".join(_deleting_sql_flush(no_style(), connection, True))


def test_post_migrate_makes_rows_in_the_kept_tables_only():
    # A flush that keeps POST_MIGRATE_TABLES sends no post_migrate: a receiver that writes
    # any other table would find it emptied and not filled again. Add its table there.
    receivers = set()
    for _, reference, *_ in post_migrate.receivers:
        receiver = reference() if isinstance(reference, weakref.ref) else reference
        receivers.add(f"{receiver.__module__}.{receiver.__qualname__}")
    assert receivers == {
        "django.contrib.auth.management.create_permissions",  # auth_permission
        "django.contrib.contenttypes.management.create_contenttypes",  # django_content_type
        "django.contrib.sites.management.create_default_site",  # django_site
        "panel.apps.name_the_site",  # django_site
    }
