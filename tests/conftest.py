"""Shared fixtures: the personas alice (org owner), bob (member) and charlie (outsider)."""

import contextlib
import faulthandler

import pytest
from django.conf import settings as django_settings
from django.utils import translation
from django.utils.translation import trans_real

from orgs.models import Role
from tests.factories import MembershipFactory, OrganisationFactory, UserFactory


def _deleting_sql_flush(style, connection, reset_sequences=True, allow_cascade=False):
    """The flush after each transactional test, on PostgreSQL as one DELETE a table.

    Django flushes with TRUNCATE, which costs PostgreSQL a new file for each of the ~50
    tables: 200-360 ms a flush here against 1.8 ms for the DELETEs (a test leaves a few
    rows), and the suite has ~940 transactional tests. No table has a trigger, and the
    foreign keys Django makes are deferred, so the order does not matter. A flush that
    resets sequences, and any other database, is Django's own.
    """
    if connection.vendor != "postgresql" or reset_sequences:
        return _django_sql_flush(style, connection, reset_sequences, allow_cascade)
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    quote = connection.ops.quote_name
    return ["SET CONSTRAINTS ALL DEFERRED;" + "".join(f"DELETE FROM {quote(t)};" for t in tables)]


def _django_sql_flush(*args):
    from django.core.management.sql import sql_flush

    return sql_flush(*args)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Transactional tests flush PostgreSQL with DELETEs (_deleting_sql_flush), and a native
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
