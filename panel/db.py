"""Running ORM work from async code outside a request, and fast batch inserts."""

from asgiref.sync import sync_to_async
from django.db import connections


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


def insert_many(objs: list, fields: list[str], using: str = "default") -> None:
    """INSERT rows with one executemany, without bulk_create's per-value compiler work.

    For append-only rows written in bulk off the request path (usage events,
    ledger entries); ids are not returned. Values go through each field's own
    get_db_prep_save, so every backend gets what the ORM would send.
    """
    if not objs:
        return
    model = type(objs[0])
    connection = connections[using]
    concrete = [model._meta.get_field(name) for name in fields]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in concrete)
    placeholders = ", ".join(["%s"] * len(concrete))
    table = connection.ops.quote_name(model._meta.db_table)
    rows = [
        tuple(f.get_db_prep_save(getattr(obj, f.attname), connection) for f in concrete)
        for obj in objs
    ]
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", rows)
