"""The usage token columns of 0012 brought to one schema on PostgreSQL, without blocking writers.

0012 first added these columns NOT NULL with a Python-only default and an inline CHECK: the
previous version's usage INSERTs failed until every web replica ran the new code, and each
CHECK scanned the whole table under an ACCESS EXCLUSIVE lock. 0012 now adds them with a
database default and no CHECK. This migration gives a database migrated by either 0012 the
same columns: the default (a catalogue change), and the ``>= 0`` CHECKs added NOT VALID (no
scan) then validated, each statement committed on its own so that the validating scan holds
only a lock that lets reads and writes through. SQLite needs nothing: the embedded mode runs
one version at a time, and its later table rebuilds restore the CHECKs from the models.
"""

from django.db import migrations

COLUMNS = {
    "ai_usageevent": ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"),
    "ai_usagerollup": ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"),
}


def _has_constraint(schema_editor, table, name):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
            [table, name],
        )
        return cursor.fetchone() is not None


def bring_to_one_schema(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for table, columns in COLUMNS.items():
        defaults = ", ".join(f"ALTER COLUMN {quote(column)} SET DEFAULT 0" for column in columns)
        schema_editor.execute(f"ALTER TABLE {quote(table)} {defaults}")
        for column in columns:
            # The name PostgreSQL gave the inline CHECK of the first 0012.
            name = f"{table}_{column}_check"
            if _has_constraint(schema_editor, table, name):
                continue
            schema_editor.execute(
                f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} "
                f"CHECK ({quote(column)} >= 0) NOT VALID"
            )
            schema_editor.execute(f"ALTER TABLE {quote(table)} VALIDATE CONSTRAINT {quote(name)}")


class Migration(migrations.Migration):
    # Each statement commits on its own: a lock taken by one is not held through the next.
    atomic = False

    dependencies = [
        ('ai', '0018_usagerollup_percentiles'),
    ]

    operations = [
        migrations.RunPython(bring_to_one_schema, migrations.RunPython.noop),
    ]
