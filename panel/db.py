"""Running ORM work from async code outside a request."""

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def _in_fresh_connection(fn, *args):
    # Off Django's request cycle nothing closes stale connections for us:
    # honour CONN_MAX_AGE and drop broken connections before and after.
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


async def run_sync(fn, *args):
    """Run ``fn(*args)`` in Django's sync thread, with connection upkeep."""
    return await sync_to_async(_in_fresh_connection)(fn, *args)
