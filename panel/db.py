"""Running ORM work from async code outside a request, and fast batch inserts."""

from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.db import connections, models

# The largest id a BigAutoField holds. A larger integer names no row, and SQLite
# cannot even bind it (OverflowError), so inputs that become ids are bounded by it.
MAX_ID = 2**63 - 1


def _drop_broken_connections() -> None:
    # Django closes connections around each request; this long-lived worker
    # thread keeps its connection (reconnecting per batch cost more than the
    # batch) and only drops one that failed. Never inside a transaction.
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block and conn.errors_occurred:
            conn.close_if_unusable_or_obsolete()


def _in_checked_connection(fn, *args):
    _drop_broken_connections()
    return fn(*args)


async def run_sync(fn, *args):
    """Run ``fn(*args)`` in Django's sync thread, dropping a broken connection first."""
    return await sync_to_async(_in_checked_connection)(fn, *args)


def insert_many(model, fields: list[str], rows: list[tuple], using: str = "default") -> None:
    """INSERT rows with one executemany, without model instances or bulk_create's compiler.

    For append-only rows written in bulk off the request path (usage events,
    ledger entries). ``rows`` are tuples of Python values in ``fields`` order
    (foreign keys by ``<name>_id``); ids are not returned. Each value goes
    through its field's own get_db_prep_save, so every backend gets what the
    ORM would send; a value repeated down a column is prepared once.
    """
    if not rows:
        return
    connection = connections[using]
    concrete = [model._meta.get_field(name) for name in fields]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in concrete)
    placeholders = ", ".join(["%s"] * len(concrete))
    table = connection.ops.quote_name(model._meta.db_table)
    prepared = [
        _prepare_column(field, column, connection)
        for field, column in zip(concrete, zip(*rows, strict=True), strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {table} ({columns}) VALUES ({placeholders})",
            list(zip(*prepared, strict=True)),
        )


# Fields whose get_db_prep_save gives back a value of these exact types unchanged (int,
# str and bool, None for NULL) on every backend: such a column is passed as it is. Exact
# classes, not subclasses: a subclass (an encrypted field, say) may prepare its own way.
_PLAIN_TYPES = {
    **dict.fromkeys(
        (
            models.IntegerField,
            models.BigIntegerField,
            models.SmallIntegerField,
            models.PositiveIntegerField,
            models.PositiveBigIntegerField,
            models.PositiveSmallIntegerField,
            models.AutoField,
            models.BigAutoField,
        ),
        frozenset((int, type(None))),
    ),
    models.CharField: frozenset((str, type(None))),
    models.TextField: frozenset((str, type(None))),
    models.BooleanField: frozenset((bool, type(None))),
}


def _plain_types(field) -> frozenset | None:
    if type(field) is models.ForeignKey:
        field = field.target_field
    return _PLAIN_TYPES.get(type(field))


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None)


def _prepare_utc_datetimes(field, values: tuple, connection) -> list | tuple | None:
    """A column of aware UTC datetimes (the writer's ``created_at``) prepared as Django
    prepares its first value, or None when that is not one of the two known ways.

    Django's way, a value at a time (``DateTimeField.get_db_prep_save``: its checks,
    ``make_naive`` into the connection's time zone, the backend's adaptation), was ~5 us a
    row: a third of the usage writer's time on SQLite (issue 20). When the connection's
    time zone is UTC, an aware UTC datetime is either passed as it is (PostgreSQL) or
    written as its naive self's ``str`` (SQLite); the first value, prepared by Django,
    says which, and the column follows it. Anything else is Django's, value by value.
    """
    if type(field) is not models.DateTimeField or getattr(connection, "timezone", None) is not UTC:
        return None
    if {type(value) for value in values} != {datetime} or {v.tzinfo for v in values} != {UTC}:
        return None
    first = values[0]
    prepared = field.get_db_prep_save(first, connection)
    if prepared is first:
        return values
    if type(prepared) is str and prepared == str(_naive(first)):
        return list(map(str, map(_naive, values)))
    return None


def _prepare_column(field, values: tuple, connection) -> list | tuple:
    plain = _plain_types(field)
    # ~6x cheaper a value than the memo below for the usage writer's int and str columns.
    if plain is not None and plain.issuperset(map(type, values)):
        return values
    dates = _prepare_utc_datetimes(field, values, connection)
    if dates is not None:
        return dates
    prepare = field.get_db_prep_save
    done: dict = {}
    out = []
    for value in values:
        key = (type(value), value)  # True and 1 are equal, but not the same value here
        try:
            out.append(done[key])
        except KeyError:
            out.append(done.setdefault(key, prepare(value, connection)))
        except TypeError:  # unhashable (JSON)
            out.append(prepare(value, connection))
    return out
