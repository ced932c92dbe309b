"""The migration check that `make lint` runs (issue 19): what it fails, on PostgreSQL's SQL."""

from django_migration_linter.sql_analyser import analyse_sql_statements

from tests.tools import lint_migrations


def issues(*sql: str) -> list[str]:
    """The codes of what the check finds in one migration's statements (warnings are errors)."""
    errors, _, warnings = analyse_sql_statements(lint_migrations.analyser_class(), list(sql))
    return sorted({issue.code for issue in errors + warnings})


def test_it_fails_dropping_or_renaming_a_column_the_old_version_still_reads():
    assert issues('ALTER TABLE "ai_usageevent" DROP COLUMN "error" CASCADE;') == ["DROP_COLUMN"]
    assert issues('ALTER TABLE "ai_usageevent" RENAME COLUMN "error" TO "failure";') == [
        "RENAME_COLUMN"
    ]


def test_it_fails_a_not_null_column_with_only_a_python_default():
    assert "NOT_NULL" in issues(
        'ALTER TABLE "ai_aimodel" ADD COLUMN "is_listed" boolean DEFAULT false NOT NULL;',
        'ALTER TABLE "ai_aimodel" ALTER COLUMN "is_listed" DROP DEFAULT;',
    )


def test_it_passes_a_not_null_column_with_a_database_default():
    assert (
        issues('ALTER TABLE "ai_aimodel" ADD COLUMN "is_listed" boolean DEFAULT false NOT NULL;')
        == []
    )


def test_it_fails_an_inline_check_on_an_existing_table_which_scans_it_under_a_lock():
    assert issues(
        'ALTER TABLE "ai_usageevent" ADD COLUMN "images" integer DEFAULT 0 NOT NULL '
        'CHECK ("images" >= 0);'
    ) == ["ADD_COLUMN_CHECK"]


def test_it_passes_checks_and_indexes_on_a_table_made_in_the_same_migration():
    assert (
        issues(
            'CREATE TABLE "ai_node" ("id" bigint NOT NULL PRIMARY KEY, "port" integer NOT NULL);',
            'ALTER TABLE "ai_node" ADD COLUMN "slots" integer DEFAULT 1 NOT NULL CHECK ("slots" >= 0);',
            'ALTER TABLE "ai_node" ADD CONSTRAINT "ai_node_port_check" CHECK ("port" >= 0);',
            'CREATE INDEX "ai_node_port_idx" ON "ai_node" ("port");',
        )
        == []
    )


def test_it_fails_a_constraint_validated_while_writers_wait_and_passes_it_not_valid():
    fk = (
        'ALTER TABLE "ai_usageevent" ADD CONSTRAINT "ai_usageevent_user_fk" FOREIGN KEY '
        '("user_id") REFERENCES "accounts_user" ("id")'
    )
    assert issues(fk + ";") == ["VALIDATING_CONSTRAINT"]
    assert issues(fk + " NOT VALID;") == []


def test_it_fails_set_not_null_a_volatile_default_and_an_index_built_under_a_lock():
    assert "SET_NOT_NULL" in issues(
        'ALTER TABLE "ai_usageevent" ALTER COLUMN "model_name" SET DEFAULT \'\';',
        'ALTER TABLE "ai_usageevent" ALTER COLUMN "model_name" SET NOT NULL;',
    )
    assert issues(
        'ALTER TABLE "ai_usageevent" ADD COLUMN "salt" double precision DEFAULT random() NOT NULL;'
    ) == ["VOLATILE_DEFAULT"]
    assert issues('CREATE INDEX "ai_usageevent_route" ON "ai_usageevent" ("route");') == [
        "CREATE_INDEX"
    ]
    assert (
        issues('CREATE INDEX CONCURRENTLY "ai_usageevent_route" ON "ai_usageevent" ("route");')
        == []
    )
