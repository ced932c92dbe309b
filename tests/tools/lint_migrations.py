"""`make lint`: fail on a migration that would break a rolling upgrade (issue 19).

Migrations run while web replicas of the previous version still serve (README,
Upgrading), so a new migration must leave the old code working (expand, then
contract a release later) and must not hold a lock that stops reads or writes of a
big table. django-migration-linter checks the SQL that `sqlmigrate` prints for
PostgreSQL (the production database): dropped or renamed columns and tables, NOT
NULL without a database default, column type changes, unique constraints and
indexes built without CONCURRENTLY on existing tables. Its warnings count as
errors here, and the checks below add what it does not see: validating a CHECK or
foreign key (a scan under a lock), SET NOT NULL (a scan), and a volatile default
(a table rewrite).

The SQL comes from a scratch database of its own (`upgrade_lint_<random>`, on the
server of DATABASE_URL when that is PostgreSQL, else the local one), created and
dropped here; nothing is migrated in it unless `sqlmigrate` needs the state before
a migration. Without a PostgreSQL server it says so and passes: CI always has one.

Every migration of the project's apps is linted; one listed in GRANDFATHERED (with
why it is let through) is reported and does not fail, and a listed one that now
passes fails, so that the list stays true. Exits 1 when a migration fails.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("accounts", "ai", "orgs", "panel")
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"

# Migrations that were applied before this check existed. Each one is let through for
# the reason given: all of them touch small admin-edited tables (a few rows to a few
# thousand), where a short lock or a failed admin write by an old replica during the
# roll is acceptable. New migrations get no such pass: write them the safe way.
SMALL_TABLE_NOT_NULL = (
    "NOT NULL column with a Python-only default on a small admin table: an old replica's "
    "admin write to it fails until web rolls"
)
SMALL_TABLE_CHECK = "an inline CHECK (a Positive*Field) scans a small admin table"
GRANDFATHERED: dict[tuple[str, str], str] = {
    ("accounts", "0003_apikey_cost_per_month_apikey_requests_per_minute"): SMALL_TABLE_CHECK
    + " (accounts_apikey)",
    ("ai", "0004_upstream_health_check_interval_upstream_probe_and_more"): SMALL_TABLE_CHECK
    + " (ai_upstream)",
    ("ai", "0013_stream_timeouts_response_cache"): SMALL_TABLE_CHECK + " (ai_aimodel)",
    ("orgs", "0004_training"): SMALL_TABLE_CHECK + " (orgs_organisation)",
    ("accounts", "0005_key_instance_permissions"): SMALL_TABLE_NOT_NULL + " (accounts_apikey)",
    ("accounts", "0006_key_rotation"): SMALL_TABLE_NOT_NULL
    + " (accounts_apikey); its unique index is built in the transaction, on a small table",
    ("ai", "0010_instance_scheduling_nodes"): SMALL_TABLE_NOT_NULL
    + " (ai_instance, ai_modellink); the CHECKs and the partial unique index scan small tables",
    ("ai", "0014_upstream_protocols"): SMALL_TABLE_NOT_NULL + " (ai_upstream)",
    ("ai", "0017_aimodel_is_listed"): SMALL_TABLE_NOT_NULL + " (ai_aimodel)",
    ("orgs", "0003_instance_quotas"): SMALL_TABLE_NOT_NULL
    + " (orgs_organisation); its CHECKs scan a small table",
    ("panel", "0002_sitesettings_allow_signup"): SMALL_TABLE_NOT_NULL
    + " (panel_sitesettings, one row)",
}

VOLATILE_DEFAULT = re.compile(
    r"ADD COLUMN .* DEFAULT .*\b(random|gen_random_uuid|uuid_generate_v[14]|clock_timestamp"
    r"|timeofday|nextval)\s*\(",
    re.IGNORECASE,
)


def _existing_table_statements(sql_statements: list[str]):
    """Each statement that alters a table not created earlier in the same migration."""
    created: set[str] = set()
    for sql in sql_statements:
        created_match = re.match(r'CREATE TABLE ("[^"]+")', sql)
        if created_match:
            created.add(created_match.group(1))
            continue
        altered = re.match(r'ALTER TABLE (?:ONLY )?("[^"]+")', sql)
        if altered and altered.group(1) not in created:
            yield sql


def adds_column_with_check(sql_statements: list[str], **kwargs) -> bool:
    """An inline CHECK on an added column: PostgreSQL scans the table under ACCESS EXCLUSIVE."""
    return any(
        re.search(r"ADD COLUMN .* CHECK \(", sql)
        for sql in _existing_table_statements(sql_statements)
    )


def validates_constraint_while_adding(sql_statements: list[str], **kwargs) -> bool:
    """A CHECK or FOREIGN KEY added without NOT VALID: a scan under a lock that stops writes."""
    return any(
        re.search(r"ADD CONSTRAINT .* (CHECK|FOREIGN KEY) ", sql) and "NOT VALID" not in sql
        for sql in _existing_table_statements(sql_statements)
    )


def sets_not_null(sql_statements: list[str], **kwargs) -> bool:
    """SET NOT NULL scans the table under ACCESS EXCLUSIVE (a validated CHECK first avoids it)."""
    return any("SET NOT NULL" in sql for sql in _existing_table_statements(sql_statements))


def adds_volatile_default(sql_statements: list[str], **kwargs) -> bool:
    """A column added with a volatile default rewrites the whole table under ACCESS EXCLUSIVE."""
    return any(VOLATILE_DEFAULT.search(sql) for sql in _existing_table_statements(sql_statements))


def analyser_class():
    """django-migration-linter's PostgreSQL analyser with the checks above added."""
    from django_migration_linter.sql_analyser import PostgresqlAnalyser
    from django_migration_linter.sql_analyser.base import Check, CheckMode, CheckType

    def check(code, fn, message):
        return Check(code, fn, message, CheckMode.TRANSACTION, CheckType.ERROR)

    class RollingUpgradeAnalyser(PostgresqlAnalyser):
        migration_checks = [
            *PostgresqlAnalyser.migration_checks,
            check(
                "ADD_COLUMN_CHECK",
                adds_column_with_check,
                "ADD COLUMN with a CHECK scans the table under an exclusive lock "
                "(add the column, then the CHECK NOT VALID, then VALIDATE it)",
            ),
            check(
                "VALIDATING_CONSTRAINT",
                validates_constraint_while_adding,
                "CHECK or FOREIGN KEY added without NOT VALID scans the table while "
                "writes wait (add it NOT VALID, then VALIDATE it in its own transaction)",
            ),
            check(
                "SET_NOT_NULL",
                sets_not_null,
                "SET NOT NULL scans the table under an exclusive lock",
            ),
            check(
                "VOLATILE_DEFAULT",
                adds_volatile_default,
                "ADD COLUMN with a volatile default rewrites the table",
            ),
        ]

    return RollingUpgradeAnalyser


def postgres_admin_url() -> str | None:
    """The `postgres` database of DATABASE_URL's server (else the local one), if it answers."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = LOCAL_POSTGRES
    url = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        return None
    return url


def make_linter():
    """A MigrationLinter over APPS with PostgreSQL's SQL, warnings as errors, grandfathering."""
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor
    from django_migration_linter import MigrationLinter

    class RollingUpgradeLinter(MigrationLinter):
        def __init__(self) -> None:
            super().__init__(
                include_apps=APPS,
                no_cache=True,
                all_warnings_as_errors=True,
                quiet=["ok", "ignore"],
            )
            self.sql_analyser_class = analyser_class()
            self.failed: list[tuple[str, str]] = []
            self.stale: list[tuple[str, str]] = []

        def get_sql(self, app_label: str, migration_name: str) -> list[str]:
            try:
                return super().get_sql(app_label, migration_name)
            except ValueError:
                # sqlmigrate looked for a constraint by introspection: give it the schema
                # this migration starts from, then ask again.
                node = self.migration_loader.graph.node_map[(app_label, migration_name)]
                executor = MigrationExecutor(connections[self.database])
                executor.migrate([parent.key for parent in node.parents])
                return super().get_sql(app_label, migration_name)

        def lint_migration(self, migration) -> None:
            key = (migration.app_label, migration.name)
            erroneous = self.nb_erroneous
            super().lint_migration(migration)
            if self.nb_erroneous > erroneous and key in GRANDFATHERED:
                self.nb_erroneous -= 1
                print(f"\tgrandfathered: {GRANDFATHERED[key]}")
            elif self.nb_erroneous > erroneous:
                self.failed.append(key)
            elif key in GRANDFATHERED:
                self.stale.append(key)

    return RollingUpgradeLinter()


def lint(admin_url: str) -> int:
    """Lint every migration of APPS in a scratch database; 1 when one fails."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import ScratchDatabase

    with ScratchDatabase(admin_url, f"upgrade_lint_{secrets.token_hex(4)}") as scratch:
        os.environ["DATABASE_URL"] = scratch.url
        import django

        django.setup()
        from django.db import connections

        try:
            linter = make_linter()
            linter.lint_all_migrations()
        finally:
            connections.close_all()
    unknown = sorted(set(GRANDFATHERED) - set(linter.migration_loader.disk_migrations))
    for app_label, name in linter.failed:
        print(f"FAILED ({app_label}, {name}): README, Upgrading, says how to write it safely")
    for app_label, name in linter.stale + unknown:
        print(f"FAILED ({app_label}, {name}) is grandfathered but passes or does not exist: ")
        print("\tremove it from GRANDFATHERED in tests/tools/lint_migrations.py")
    failures = len(linter.failed) + len(linter.stale) + len(unknown)
    print(f"migrations: {linter.nb_total - linter.nb_ignored} linted, {failures} failing")
    return 1 if failures else 0


def main() -> int:
    os.chdir(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    # Settings only: nothing here serves, keeps secrets or writes a data directory.
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("SECRET_KEY", "lint-migrations-only-" + secrets.token_hex(16))
    os.environ.setdefault("FIELD_ENCRYPTION_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["REDIS_URL"] = ""
    admin_url = postgres_admin_url()
    if admin_url is None:
        print("migrations: not linted, no PostgreSQL server answers (issue 19; CI has one)")
        return 0
    with tempfile.TemporaryDirectory(prefix="lint-migrations-") as data_dir:
        os.environ["DATA_DIR"] = data_dir
        return lint(admin_url)


if __name__ == "__main__":
    sys.exit(main())
