"""Usage on PostgreSQL: the writer's insert rate, the rollup's cost, the table's size under prune.

In a scratch database ``bench_usage_<random>`` (created, migrated, dropped) on the
server of DATABASE_URL (else 127.0.0.1:5432, or ``--admin-url``):

1. writer: the gateway's own path (``ledger.usage_queue`` on an event loop, the
   background flusher writing a batch every GATEWAY_USAGE_FLUSH_INTERVAL through
   ``insert_many``) fed as fast as it takes rows for ``--seconds``: rows/s written.
2. rollup: ``--events`` events over 48 hours, then a rebuild of those 48 hours
   (what every run cost before, each minute) against one incremental run after a
   minute's worth of new events, and one with a late event 30 hours old.
3. prune: ``--days`` simulated days of ``--per-day`` events each, retention 3 days:
   each day is written, rolled up and the oldest day pruned in batches, and the
   table's pg_total_relation_size printed; ``--vacuum`` runs a plain VACUUM after
   each prune (what autovacuum does when it is on).

Prints numbers; asserts nothing. No PostgreSQL: prints a line and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LOCAL_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


def admin_url(given: str | None) -> str | None:
    """The maintenance database's URL, or None when no PostgreSQL answers."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    url = given or os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = LOCAL_ADMIN
    url = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        return None
    return url


def row(at: datetime, n: int):
    from ai.gateway.ledger import UsageRow

    # 50 users, 4 models, a key each: a few hundred rollup keys per hour.
    user = n % 50 + 1
    return UsageRow(
        at, f"req_bench_{n}", user, user % 5 + 1, user + 1000, user, n % 4 + 1, "bench",
        1, "chat.completions", n % 3 == 0, "ok" if n % 20 else "upstream_error", 200,
        120, 40, 0, False, Decimal("0.000150"), 300 + n % 700, 50 + n % 90, 1, "", 60, 0, 0,
    )  # fmt: skip


async def _feed(seconds: float) -> int:
    from ai.gateway import ledger

    queued = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if len(ledger._pending.events) > 20_000:  # the writer is behind: let it catch up
            await asyncio.sleep(0.01)
            continue
        now = datetime.now(UTC)
        for _ in range(200):
            ledger.usage_queue(row(now, queued), None, is_journaled=False)
            queued += 1
        await asyncio.sleep(0)
    await ledger.shutdown()  # what a graceful stop does: write everything still pending
    return queued


def bench_writer(seconds: float) -> None:
    from django.conf import settings

    from ai.models import UsageEvent

    started = time.perf_counter()
    queued = asyncio.run(_feed(seconds))
    elapsed = time.perf_counter() - started
    written = UsageEvent.objects.count()
    interval = settings.GATEWAY_USAGE_FLUSH_INTERVAL
    print(
        f"writer: {written} of {queued} events written in {elapsed:.1f} s = "
        f"{written / elapsed:,.0f} events/s (flush every {interval} s, ledger.usage_queue)"
    )


def insert_spread(start: datetime, span: timedelta, count: int, first: int) -> float:
    """``count`` events evenly over ``span`` from ``start`` (insert_many, 10k a batch); seconds."""
    from django.db import transaction

    from ai.gateway.ledger import UsageRow
    from ai.models import UsageEvent
    from panel.db import insert_many

    began = time.perf_counter()
    step = span / max(count, 1)
    for offset in range(0, count, 10_000):
        batch = [
            row(start + step * i, first + i) for i in range(offset, min(count, offset + 10_000))
        ]
        with transaction.atomic():
            insert_many(UsageEvent, UsageRow._fields, batch)
    return time.perf_counter() - began


def timed(fn, **kwargs) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn(**kwargs)
    return time.perf_counter() - began, result


def reset() -> None:
    """Empty the usage tables: each part starts from nothing."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE ai_usageevent, ai_usagerollup, ai_usagesample, ai_rollupstate RESTART IDENTITY"
        )


def bench_rollup(events: int) -> None:
    from ai.services import usage_rollup

    reset()
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    seconds = insert_spread(now - timedelta(hours=48), timedelta(hours=48), events, 10**7)
    print(f"rollup: {events:,} events over 48 h inserted in {seconds:.1f} s")
    seconds, hours = timed(usage_rollup, now=now, rebuild=True)
    print(
        f"rollup: full recompute of 48 h (each run's work before): {seconds:.2f} s, "
        f"{events / seconds:,.0f} events/s, {hours} hourly rows"
    )
    minute = events // (48 * 60)
    insert_spread(now, timedelta(minutes=1), minute, 2 * 10**7)
    seconds, hours = timed(usage_rollup, now=now + timedelta(minutes=1))
    print(
        f"rollup: incremental run after a minute's {minute} events: {seconds:.2f} s "
        f"({hours} hourly rows rewritten: the current hour)"
    )
    insert_spread(now, timedelta(minutes=1), minute, 3 * 10**7)
    insert_spread(now - timedelta(hours=30), timedelta(seconds=1), 1, 4 * 10**7)
    seconds, hours = timed(usage_rollup, now=now + timedelta(minutes=2))
    print(f"rollup: the same with one late event 30 h old: {seconds:.2f} s ({hours} hourly rows)")


def table_size() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_total_relation_size('ai_usageevent'),"
            " (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'ai_usageevent')"
        )
        return cursor.fetchone()


def bench_prune(days: int, per_day: int, vacuum: bool) -> None:
    from django.db import connection
    from django.test.utils import override_settings

    from ai.services import usage_prune, usage_rollup

    reset()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        autovacuum = cursor.fetchone()[0]
    mode = "a plain VACUUM after each prune" if vacuum else "no VACUUM of its own"
    print(
        f"prune: {days} days of {per_day:,} events, retention 3 days, {mode}, "
        f"the server's autovacuum {autovacuum}"
    )
    with override_settings(USAGE_RETENTION_DAYS=3):
        for day in range(days):
            start = base + timedelta(days=day)
            insert_spread(start, timedelta(days=1), per_day, day * per_day)
            usage_rollup(now=start + timedelta(days=1))
            began = time.perf_counter()
            deleted = usage_prune(now=start + timedelta(days=1), batch_size=5000)
            pruned_in = time.perf_counter() - began
            if vacuum:
                with connection.cursor() as cursor:
                    cursor.execute("VACUUM ai_usageevent")
            size, dead = table_size()
            print(
                f"prune: day {day + 1:2}: deleted {deleted:7,} in {pruned_in:5.2f} s, "
                f"table+indexes {size / 2**20:7.1f} MiB, dead tuples {dead}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-url", help="a PostgreSQL URL (its maintenance database is used)")
    parser.add_argument("--seconds", type=float, default=5.0, help="writer: how long to feed it")
    parser.add_argument("--events", type=int, default=200_000, help="rollup: events over 48 h")
    parser.add_argument("--days", type=int, default=8, help="prune: simulated days")
    parser.add_argument("--per-day", type=int, default=20_000, help="prune: events a day")
    parser.add_argument("--vacuum", action="store_true", help="prune: VACUUM after each prune")
    parser.add_argument("--only", choices=["writer", "rollup", "prune"], help="one part only")
    args = parser.parse_args()

    url = admin_url(args.admin_url)
    if url is None:
        print("usage writer bench: skipped, no PostgreSQL (set DATABASE_URL or --admin-url)")
        return 0
    from tests.servers import ScratchDatabase

    with ScratchDatabase(url, f"bench_usage_{uuid.uuid4().hex[:8]}") as database:
        os.environ.update(
            DATABASE_URL=database.url,
            REDIS_URL="",
            DEBUG="true",
            DATA_DIR=tempfile.mkdtemp(prefix="bench-usage-"),
            LOG_LEVEL="WARNING",
        )
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
        import django
        from django.core.management import call_command
        from django.db import connections

        django.setup()
        call_command("migrate", verbosity=0)
        try:
            if args.only in (None, "writer"):
                bench_writer(args.seconds)
            if args.only in (None, "rollup"):
                bench_rollup(args.events)
            if args.only in (None, "prune"):
                bench_prune(args.days, args.per_day, args.vacuum)
        finally:
            connections.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
