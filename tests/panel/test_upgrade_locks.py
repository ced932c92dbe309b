"""Upgrades while the previous version serves (issue 19): `migrate` to the head, on a usage
table of a million rows, never makes the old version's hot statements wait a second for a lock.

A scratch PostgreSQL database of the test's own is migrated to a state before the
migrations that touch the usage tables, filled with a million usage events, then migrated
to the head in a subprocess (as the one-shot migrate step of a deployment) while a probe
connection runs the previous version's statements in a loop with `lock_timeout = 1s`.
The suite's own test database is never touched.
"""

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest

from tests.servers import ScratchDatabase, postgres_admin_url_or_skip

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
# Before every migration that touches ai_usageevent or ai_usagerollup since they were made.
START = ("ai", "0011_stored_responses")
ROWS = 1_000_000
LOCK_TIMEOUT = "1s"

# The usage writer's INSERT as the previous version sends it: the columns it knows.
OLD_USAGE_COLUMNS = (
    "created_at, request_id, route, is_stream, status, http_status, prompt_tokens, "
    "completion_tokens, images, is_estimated, cost, latency_ms, ttft_ms, attempts, error, "
    "api_key_id, link_id, model_id, organisation_id, upstream_id, user_id, model_name"
)
FILL = f"""
    INSERT INTO ai_usageevent ({OLD_USAGE_COLUMNS})
    SELECT now() - g * interval '1 second', 'fill-' || g, 'chat', false, 'ok', 200, 10, 20,
           0, false, 0.0001, 100, NULL, 1, '', 1 + g % 50, 1 + g % 20, 1 + g % 5, NULL, 1,
           1 + g % 100, 'demo-chat'
    FROM generate_series(1, {ROWS}) g
"""
OLD_USAGE_INSERT = f"""
    INSERT INTO ai_usageevent ({OLD_USAGE_COLUMNS})
    VALUES (now(), %s, 'chat', false, 'ok', 200, 10, 20, 0, false, 0.0001, 100, NULL, 1, '',
            1, 1, 1, NULL, 1, 1, 'demo-chat')
"""


def admin_url() -> str:
    try:
        return postgres_admin_url_or_skip()
    except pytest.skip.Exception:
        pytest.skip("issue 19: needs PostgreSQL")


class OldDatabase(NamedTuple):
    """The scratch database at START, and what the previous version asks of it."""

    url: str
    data_dir: Path
    key_lookup: str = ""


def migrate(database: OldDatabase, *target: str) -> subprocess.CompletedProcess:
    """`manage.py migrate [app migration]` on the scratch database, in a process of its own."""
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "REDIS_URL": "",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(database.data_dir),
    }
    return subprocess.run(
        [sys.executable, "manage.py", "migrate", *target, "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def fill_usage_table(url: str) -> None:
    """A million usage events, quickly: indexes dropped, rows from generate_series, rebuilt."""
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ai_usageevent' "
            "AND indexname <> 'ai_usageevent_pkey'"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute(FILL)
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("ANALYZE ai_usageevent")


def old_key_lookup(url: str) -> str:
    """The previous version's API key lookup: the columns its model had, by hash."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'accounts_apikey' ORDER BY ordinal_position"
        ).fetchall()
    names = ", ".join(f'"{name}"' for (name,) in columns)
    return f"SELECT {names} FROM accounts_apikey WHERE key_hash = %s LIMIT 21"


class Probe:
    """The previous version's hot statements in a loop, each allowed to wait 1 s for a lock."""

    def __init__(self, url: str, key_lookup: str) -> None:
        self.url = url
        self.statements = [
            ("usage INSERT", OLD_USAGE_INSERT),
            ("key lookup SELECT", key_lookup),
        ]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.waits: list[tuple[float, float]] = []  # (finished at, seconds taken)
        self.timeouts: list[str] = []
        self.errors: list[str] = []
        self.inserted = 0

    def start(self) -> "Probe":
        self.thread.start()
        while not self.waits and self.thread.is_alive():
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    def ran_between(self, start: float, end: float) -> int:
        return sum(1 for finished, _ in self.waits if start <= finished <= end)

    @property
    def longest_wait(self) -> float:
        return max(seconds for _, seconds in self.waits)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            while not self.stopping.is_set():
                for name, sql in self.statements:
                    self._execute(conn, name, sql)

    def _execute(self, conn, name: str, sql: str) -> None:
        started = time.monotonic()
        try:
            if name == "usage INSERT":
                conn.execute(sql, [f"probe-{secrets.token_hex(8)}"])
                self.inserted += 1
            else:
                conn.execute(sql, ["no-such-hash"]).fetchall()
        except psycopg.errors.LockNotAvailable as exc:
            self.timeouts.append(f"{name}: {exc}")
        except psycopg.Error as exc:
            self.errors.append(f"{name}: {exc}")
        finished = time.monotonic()
        self.waits.append((finished, finished - started))


@pytest.fixture(scope="module")
def old_database(tmp_path_factory):
    """A scratch database at START with a million usage events; dropped afterwards."""
    url = admin_url()
    with ScratchDatabase(url, f"upgrade_{secrets.token_hex(4)}") as scratch:
        database = OldDatabase(scratch.url, tmp_path_factory.mktemp("upgrade-data"))
        result = migrate(database, *START)
        assert result.returncode == 0, result.stderr
        fill_usage_table(database.url)
        yield database._replace(key_lookup=old_key_lookup(database.url))


def test_migrating_a_million_usage_events_to_the_head_keeps_the_old_version_serving(
    old_database,
):
    probe = Probe(old_database.url, old_database.key_lookup).start()
    started = time.monotonic()
    result = migrate(old_database)
    ended = time.monotonic()
    probe.stop()

    print(
        f"\nmigrate to the head: {ended - started:.1f} s; longest probe wait "
        f"{probe.longest_wait * 1000:.0f} ms over {len(probe.waits)} statements"
    )
    assert result.returncode == 0, result.stderr
    assert probe.timeouts == []
    assert probe.errors == []
    assert probe.ran_between(started, ended) > 0
    with psycopg.connect(old_database.url) as conn:
        applied = conn.execute(
            "SELECT count(*) FROM django_migrations WHERE app = 'ai' AND name > %s", [START[1]]
        ).fetchone()[0]
        counts = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE cache_read_tokens = 0 AND reasoning_tokens "
            "= 0 AND NOT is_cache_hit) FROM ai_usageevent WHERE request_id LIKE 'probe-%'"
        ).fetchone()
        total = conn.execute("SELECT count(*) FROM ai_usageevent").fetchone()[0]
    assert applied > 0
    # Every row the old version wrote, before, during and after the upgrade, is there,
    # with the database defaults in the columns it does not know.
    assert counts == (probe.inserted, probe.inserted)
    assert total == ROWS + probe.inserted


def test_the_probe_reports_a_lock_held_for_two_seconds(old_database):
    probe = Probe(old_database.url, old_database.key_lookup).start()
    with psycopg.connect(old_database.url) as conn, conn.transaction():
        conn.execute("LOCK TABLE ai_usageevent IN ACCESS EXCLUSIVE MODE")
        time.sleep(2)
    probe.stop()

    print(f"\nlongest probe wait under a held lock: {probe.longest_wait * 1000:.0f} ms")
    assert probe.timeouts
    assert all(timeout.startswith("usage INSERT") for timeout in probe.timeouts)
    assert probe.errors == []
