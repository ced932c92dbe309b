"""Shared fixtures: the personas alice (org owner), bob (member) and charlie (outsider)."""

import contextlib
import faulthandler
import hashlib

import pytest
from django.conf import settings as django_settings
from django.utils import translation
from django.utils.translation import trans_real

from orgs.models import Role
from tests.factories import MembershipFactory, OrganisationFactory, UserFactory

# What post_migrate makes (content types, permissions, the site), kept across a flush when it
# is as the last signal left it; then the flush sends no signal (_emit_post_migrate).
POST_MIGRATE_TABLES = ("django_content_type", "auth_permission", "django_site")
_left_by_signal: dict[str, str] = {}  # database alias -> those tables' rows after the signal
_kept: set[str] = set()  # the aliases whose flush under way keeps them


def _post_migrate_rows(connection) -> str:
    quote = connection.ops.quote_name
    rows = []
    with connection.cursor() as cursor:
        for table in POST_MIGRATE_TABLES:
            cursor.execute(f"SELECT * FROM {quote(table)} ORDER BY 1")
            rows.append(cursor.fetchall())
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _deleting_sql_flush(style, connection, reset_sequences=True, allow_cascade=False):
    """The flush after each transactional test: the rows tests made, not what post_migrate made.

    Django empties every table, then sends post_migrate, which makes the content types,
    permissions and the site again: 25 ms a flush on SQLite and 50-60 ms on PostgreSQL
    here, for ~940 transactional tests. Those tables are kept when their rows are exactly
    what the last signal left (compared whole, ~1 ms), and the flush then sends none;
    a test that changed them gets Django's flush and the signal.

    On PostgreSQL the flush is one DELETE a table, not Django's TRUNCATE, which costs a
    new file for each of the ~50 tables: 200-360 ms a flush against 1.8 ms for the DELETEs
    (a test leaves a few rows). No table has a trigger, and the foreign keys Django makes
    are deferred, so the order does not matter. A flush that resets sequences is Django's.
    """
    _kept.discard(connection.alias)
    if reset_sequences:
        return _django_sql_flush(style, connection, reset_sequences, allow_cascade)
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    if _left_by_signal.get(connection.alias) == _post_migrate_rows(connection):
        _kept.add(connection.alias)
        tables = [table for table in tables if table not in POST_MIGRATE_TABLES]
    if connection.vendor != "postgresql":
        return connection.ops.sql_flush(style, tables, allow_cascade=allow_cascade)
    quote = connection.ops.quote_name
    return ["SET CONSTRAINTS ALL DEFERRED;" + "".join(f"DELETE FROM {quote(t)};" for t in tables)]


def _django_sql_flush(*args):
    from django.core.management.sql import sql_flush

    return sql_flush(*args)


def _emit_post_migrate(verbosity, interactive, db, **kwargs):
    """Django's post_migrate after a flush, unless the flush kept what it would make."""
    from django.core.management.sql import emit_post_migrate_signal
    from django.db import connections

    if db in _kept:
        return
    emit_post_migrate_signal(verbosity, interactive, db, **kwargs)
    _left_by_signal[db] = _post_migrate_rows(connections[db])


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Transactional tests' flushes keep what post_migrate made and delete (not truncate) on
    PostgreSQL (_deleting_sql_flush, _emit_post_migrate), and a native
    crash (SIGSEGV, SIGABRT) prints the stack of the thread it happened in, alone.

    pytest's faulthandler prints every thread's, the crashing one somewhere among them, and a
    crash log cut short in the middle (CI keeps its head and tail) loses it. This writes to
    the copy of stderr pytest's plugin made before capturing began."""
    from _pytest.faulthandler import fault_handler_stderr_fd_key

    if fault_handler_stderr_fd_key in config.stash:
        faulthandler.enable(file=config.stash[fault_handler_stderr_fd_key], all_threads=False)

    from django.core.management.commands import flush

    from tests.workers import check_isolated

    flush.sql_flush = _deleting_sql_flush
    flush.emit_post_migrate_signal = _emit_post_migrate
    check_isolated()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def default_language():
    """Each test ends in the default language: a request in Vietnamese leaves it active in
    the thread (LocaleMiddleware activates a language; nothing deactivates it), and the
    next test's gettext outside a request would speak it."""
    yield
    translation.deactivate()


@pytest.fixture
def untranslated(monkeypatch):
    """The texts looked up under Vietnamese that no Vietnamese catalogue (ours, Django's)
    translates: every gettext call of a template tag, a lazy label, a message or a mail.
    The language selector's names are left out: each is shown in its own language."""
    catalog = trans_real.translation("vi")._catalog
    autonyms = {name for _, name in django_settings.LANGUAGES}
    missing = []
    keys = {
        "gettext": lambda message: message,
        "pgettext": lambda context, message: f"{context}\x04{message}",
        "ngettext": lambda singular, plural, number: (singular, 0),
        "npgettext": lambda context, singular, plural, number: (f"{context}\x04{singular}", 0),
    }
    for name, key_of in keys.items():
        real = getattr(translation._trans, name)

        def watched(*args, real=real, key_of=key_of):
            key = key_of(*args)
            if (
                translation.get_language() == "vi"
                and key
                and key[0]
                and key not in catalog
                and key not in autonyms
            ):
                missing.append(args)
            return real(*args)

        monkeypatch.setattr(translation._trans, name, watched)
    return missing


class Clock:
    """A stand-in for time.monotonic that moves only when a test moves it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import time

    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    return clock


@pytest.fixture
def assert_fixed_queries(django_assert_num_queries, django_capture_on_commit_callbacks):
    """Checks that a list costs the same number of queries with more rows (no N+1).

    ``listed()`` makes the request and returns how many items it listed; ``add_rows()``
    adds rows for it to list, with their on-commit hooks run (the gateway's cache
    invalidation), so each request below starts from the same state. The first
    request is not counted: it leaves behind what every request would (a session).
    """

    def check(queries: int, listed, add_rows) -> None:
        lengths = []
        for is_counted in (False, True, True):
            with django_capture_on_commit_callbacks(execute=True):
                add_rows()
            with django_assert_num_queries(queries) if is_counted else contextlib.nullcontext():
                lengths.append(listed())
        assert 0 < lengths[0] < lengths[1] < lengths[2]

    return check


@pytest.fixture
def empty_cache():
    """An empty cache, where allauth counts sign-in attempts (its rate limits) and keeps
    the TOTP codes used; emptied again after the test, for the tests after it."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def charlie(db):
    return UserFactory(username="charlie")


@pytest.fixture
def acme(alice, bob):
    """Alice's organisation; bob is a member, charlie is not."""
    org = OrganisationFactory(name="Acme", slug="acme")
    MembershipFactory(user=alice, organisation=org, role=Role.OWNER)
    MembershipFactory(user=bob, organisation=org, role=Role.MEMBER)
    return org


@pytest.fixture
def superuser(db):
    from accounts.models import User

    return User.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture(scope="session")
def fake_upstream():
    """The project's fake OpenAI-compatible upstream, a real server on loopback."""
    from fakeupstream import FakeUpstreamThread

    with FakeUpstreamThread() as server:
        yield server


@pytest.fixture(scope="session")
def asgi_server(django_db_setup, django_db_blocker):
    """The project's ASGI app served by uvicorn on loopback, in a background thread."""
    from tests.servers import UvicornThread

    with django_db_blocker.unblock(), UvicornThread() as server:
        yield server
        _close_server_connections()


def _close_server_connections() -> None:
    # The server's worker threads keep database connections; PostgreSQL would
    # refuse to drop the test database while they are open.
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(autouse=True)
def fresh_gateway_state(settings, request):
    """Each test starts with empty per-process caches, closed breakers and no pending usage."""
    from ai.gateway import journal, ledger, router
    from ai.gateway.leases import leases
    from ai.gateway.reservations import plans
    from ai.instances import activity
    from panel import logs, outage
    from panel.localcache import registry_cache

    settings.GATEWAY_USAGE_FLUSH_INTERVAL = 0.01
    # The test client runs an async view through async_to_sync, which copies its context
    # back into the test's thread: an earlier test's request id must not stay set.
    logs.request_id.set(None)
    outage.database.reset()
    outage.redis.reset()
    registry_cache.clear()
    router.breaker.reset()
    plans.reset()
    leases.reset()  # a lease of an earlier test must not settle into this one's counters
    ledger.reset()
    journal.forget()
    activity.reset()
    yield
    _wait_for_usage_writes(ledger)
    registry_cache.clear()


def _wait_for_usage_writes(ledger, attempts: int = 500) -> None:
    # Usage is written by a background task on the server's loop; let it land
    # before the test's database is flushed under it. Counted in sleeps, not by
    # the clock: some tests stand in for time.monotonic.
    import time

    from ai.gateway import responses_store

    for _ in range(attempts):
        if ledger.is_idle() and responses_store.is_idle():
            return
        time.sleep(0.01)
