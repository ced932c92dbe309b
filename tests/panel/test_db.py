"""panel.db.insert_many: rows written as the ORM would write them."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection, models

from orgs.models import LedgerEntry, LedgerKind
from orgs.services import wallet_for
from panel.db import _prepare_column, insert_many


@pytest.mark.django_db
def test_rows_read_back_as_the_orm_writes_them(acme, alice):
    wallet = wallet_for(organisation=acme)
    at = datetime(2026, 12, 5, 23, 0, 1, 123456, tzinfo=UTC)
    fields = ["created_at", "wallet_id", "kind", "amount", "reason", "request_id", "created_by_id"]
    rows = [
        (at, wallet.pk, LedgerKind.USAGE, Decimal("-0.000123"), "usage", "req_1", None),
        (at, wallet.pk, LedgerKind.USAGE, Decimal("-2.5"), "usage ünïcode", "req_2", alice.pk),
    ]

    insert_many(LedgerEntry, fields, rows)
    via_orm = LedgerEntry.objects.create(
        wallet=wallet,
        kind=LedgerKind.USAGE,
        amount=Decimal("-2.5"),
        reason="usage ünïcode",
        request_id="req_3",
        created_by=alice,
    )

    first, second = LedgerEntry.objects.filter(request_id__in=["req_1", "req_2"]).order_by("id")
    assert (first.created_at, first.amount, first.created_by_id) == (at, Decimal("-0.000123"), None)
    assert first.kind == LedgerKind.USAGE and first.wallet_id == wallet.pk
    assert (second.reason, second.created_by_id) == (via_orm.reason, alice.pk)
    assert second.amount == LedgerEntry.objects.get(pk=via_orm.pk).amount


def test_a_column_of_plain_values_is_passed_as_it_is_and_the_rest_prepared():
    class Shouting(models.CharField):  # a subclass prepares its own way (encrypted, say)
        def get_db_prep_save(self, value, connection):
            return value.upper()

    plain = ("a", "b", None)
    assert _prepare_column(models.CharField(max_length=5), plain, connection) is plain
    assert _prepare_column(Shouting(max_length=5), ("a", "b"), connection) == ["A", "B"]
    # A value of another type than the field's own goes through the field: "7" is an int.
    assert _prepare_column(models.IntegerField(), (1, "7"), connection) == [1, 7]
    assert _prepare_column(models.BooleanField(), (True, 1), connection) == [True, True]


def _djangos(field, values):
    return [field.get_db_prep_save(value, connection) for value in values]


@pytest.mark.django_db
def test_a_column_of_utc_datetimes_is_prepared_as_django_prepares_each_one():
    field = models.DateTimeField()
    values = (
        datetime(2026, 12, 5, 23, 0, 1, 123456, tzinfo=UTC),
        datetime(2026, 12, 5, 23, 0, 2, tzinfo=UTC),  # no microseconds: no fraction written
        datetime(1999, 1, 1, tzinfo=UTC),
    )
    assert list(_prepare_column(field, values, connection)) == _djangos(field, values)


@pytest.mark.django_db
def test_datetimes_of_another_zone_or_kind_are_left_to_django(settings):
    from zoneinfo import ZoneInfo

    field = models.DateTimeField()
    berlin = datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    utc = datetime(2026, 7, 1, 12, tzinfo=UTC)
    for values in [(utc, berlin), (berlin, utc), (utc, "2026-07-01 12:00:00+00:00"), (utc, None)]:
        assert list(_prepare_column(field, values, connection)) == _djangos(field, values)

    class Shifted(models.DateTimeField):  # a subclass prepares its own way
        def get_db_prep_save(self, value, connection):
            return "shifted"

    assert _prepare_column(Shifted(), (utc, utc), connection) == ["shifted", "shifted"]


@pytest.mark.django_db
def test_utc_datetimes_follow_a_connection_in_another_time_zone(monkeypatch):
    from zoneinfo import ZoneInfo

    # DATABASES' TIME_ZONE: SQLite then stores local times. London's is UTC's in winter,
    # so the first value alone does not tell the summer one apart.
    monkeypatch.setattr(connection, "timezone", ZoneInfo("Europe/London"))
    field = models.DateTimeField()
    values = (datetime(2026, 12, 5, 23, 0, 1, tzinfo=UTC), datetime(2026, 7, 6, tzinfo=UTC))
    assert list(_prepare_column(field, values, connection)) == _djangos(field, values)
