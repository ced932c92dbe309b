"""Running ORM work from async code outside a request."""

from asgiref.sync import sync_to_async
from django.db import connections


def _close_old_connections() -> None:
    # As Django does around a request: honour CONN_MAX_AGE and drop broken
    # connections. Never inside a transaction (a test's, or a caller's).
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def _in_fresh_connection(fn, *args):
    _close_old_connections()
    try:
        return fn(*args)
    finally:
        _close_old_connections()


async def run_sync(fn, *args):
    """Run ``fn(*args)`` in Django's sync thread, with connection upkeep."""
    return await sync_to_async(_in_fresh_connection)(fn, *args)
