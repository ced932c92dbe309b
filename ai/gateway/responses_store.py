"""Stored responses (the Responses API's ``store``): written off the request path, read per tenant.

A finished response is written (``response_save``, one thread hop) before the
client gets the reply or the stream's last event, so any replica finds it as soon
as the client can ask for it: one that continues or retrieves it on another
process at once is never told 404. While the row is being written this process
serves it from memory; a write that fails (the database away) is retried in the
background, logged, and the reply still goes out (then only this process finds
the response until the retry succeeds). Reading, continuing and deleting cost
one thread hop each, on the requests that ask for them.

A response belongs to a tenant: its user and its key's organisation (none for a
personal key or a session). Any other caller, and everyone once it expired
(``RESPONSES_TTL_DAYS``), gets None, never a hint that it exists.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from accounts.authentication import Identity
from panel import logs
from panel.db import run_sync

from ..models import StoredResponse

logger = logging.getLogger(__name__)
RETRY_SECONDS = 1.0


class Tenant(NamedTuple):
    user_id: int
    organisation_id: int | None


class Stored(NamedTuple):
    """One response to keep, as its row holds it."""

    id: str
    tenant: Tenant
    model_name: str
    input_items: list[dict]
    response: dict
    created_at: datetime
    expires_at: datetime


_pending: dict[str, Stored] = {}
_writer: asyncio.Task | None = None  # retries the writes that failed
_writing: set[asyncio.Task] = set()  # the writes under way (``response_save``)


def tenant_of(identity: Identity) -> Tenant:
    key = identity.key
    return Tenant(identity.user_id, key.organisation_id if key else None)


async def response_save(
    *, tenant: Tenant, model_name: str, input_items: list, response: dict
) -> None:
    """Store a finished response; once this returns, every process finds it.

    The write is shielded: a client that leaves meanwhile does not stop it. A failed
    write is queued for the background writer (logged), never raised to the client.
    """
    now = timezone.now()
    expires_at = now + timedelta(days=settings.RESPONSES_TTL_DAYS)
    stored = Stored(response["id"], tenant, model_name, input_items, response, now, expires_at)
    _pending[stored.id] = stored
    task = asyncio.get_running_loop().create_task(_write_one(stored))
    _writing.add(task)
    task.add_done_callback(_writing.discard)
    await asyncio.shield(task)


async def _write_one(stored: Stored) -> None:
    try:
        await run_sync(_insert, [stored])
    except DatabaseError:
        logger.exception("Could not store response %s; retrying in the background", stored.id)
        _start_writer()
        return
    if _pending.get(stored.id) is stored:
        del _pending[stored.id]


def _start_writer() -> None:
    global _writer
    if _writer is None or _writer.done():
        _writer = asyncio.get_running_loop().create_task(
            _write_pending(), context=logs.outside_requests()
        )


async def response_get(response_id: str, *, tenant: Tenant) -> Stored | None:
    """The tenant's unexpired stored response by id, else None."""
    stored = _pending.get(response_id)
    if stored is None:
        stored = await run_sync(_select, response_id, tenant)
    if stored is None or stored.tenant != tenant or stored.expires_at <= timezone.now():
        return None
    return stored


async def response_delete(response_id: str, *, tenant: Tenant) -> bool:
    """Delete the tenant's stored response; False when it has none by that id."""
    if (stored := _pending.get(response_id)) is not None and stored.tenant == tenant:
        await flush()
    return await run_sync(_delete, response_id, tenant)


async def flush() -> None:
    """Wait until every response saved is written (ASGI shutdown, and a delete)."""
    while _writing:
        await asyncio.wait(set(_writing))
    while _writer is not None and not _writer.done() and _pending:
        await asyncio.shield(_writer)


def is_idle() -> bool:
    return not _pending


def responses_purge() -> int:
    """Delete expired stored responses (beat); how many went."""
    deleted, _ = StoredResponse.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


# --- Writes and reads (in Django's sync thread) ------------------------------------------


async def _write_pending() -> None:
    while _pending:
        batch = list(_pending.values())
        try:
            await run_sync(_insert, batch)
        except DatabaseError:
            logger.exception("Could not store %d responses; retrying", len(batch))
            await asyncio.sleep(RETRY_SECONDS)
            continue
        for stored in batch:
            if _pending.get(stored.id) is stored:
                del _pending[stored.id]


def _insert(batch: list[Stored]) -> None:
    rows = [
        StoredResponse(
            id=s.id,
            user_id=s.tenant.user_id,
            organisation_id=s.tenant.organisation_id,
            model_name=s.model_name,
            input_items=s.input_items,
            response=s.response,
            created_at=s.created_at,
            expires_at=s.expires_at,
        )
        for s in batch
    ]
    StoredResponse.objects.bulk_create(rows, ignore_conflicts=True)


def _select(response_id: str, tenant: Tenant) -> Stored | None:
    row = StoredResponse.objects.filter(
        id=response_id,
        user_id=tenant.user_id,
        organisation_id=tenant.organisation_id,
        expires_at__gt=timezone.now(),
    ).first()
    if row is None:
        return None
    return Stored(
        row.id,
        Tenant(row.user_id, row.organisation_id),
        row.model_name,
        row.input_items,
        row.response,
        row.created_at,
        row.expires_at,
    )


def _delete(response_id: str, tenant: Tenant) -> bool:
    deleted, _ = StoredResponse.objects.filter(
        id=response_id,
        user_id=tenant.user_id,
        organisation_id=tenant.organisation_id,
        expires_at__gt=timezone.now(),
    ).delete()
    return deleted > 0
