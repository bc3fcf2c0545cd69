"""The audit table partitioned by day on created_at, on PostgreSQL only (issue 20).

The existing table is renamed, a partitioned one of the same columns takes its name
(primary key (id, created_at), identity continued from the old sequence), a daily partition
is created for every day from the oldest row to a week ahead plus a default partition,
the rows are copied over and the old table dropped. On SQLite (the embedded default) the
table stays a plain table: the conversion does nothing there. Runs once, in one
transaction: on a large table it holds the audit table for the time of the copy."""

from datetime import UTC, datetime, timedelta

from django.db import migrations, models

TABLE = "broker_app_auditevent"
OLD = f"{TABLE}_plain"
AHEAD_DAYS = 7


def _partition_sql(day) -> str:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    return (
        f'CREATE TABLE IF NOT EXISTS "{TABLE}_p{start:%Y%m%d}" PARTITION OF "{TABLE}" '
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def _indexes(cursor, table: str) -> list[str]:
    cursor.execute(
        "SELECT indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname "
        "JOIN pg_index x ON x.indexrelid = c.oid WHERE i.tablename = %s AND NOT x.indisprimary",
        [table],
    )
    return [row[0] for row in cursor.fetchall()]


def _move(cursor, source: str, target: str) -> None:
    """Copy the rows, continue the identity from the old sequence, drop the source, give the
    source's indexes (by their names) to the target."""
    indexes = _indexes(cursor, source)
    cursor.execute(f'INSERT INTO "{target}" OVERRIDING SYSTEM VALUE SELECT * FROM "{source}"')
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id'), pg_get_serial_sequence(%s, 'id')", [source, target])
    old_seq, new_seq = cursor.fetchone()
    cursor.execute(f"SELECT last_value, is_called FROM {old_seq}")
    last_value, is_called = cursor.fetchone()
    cursor.execute(f'SELECT coalesce(max(id), 0) FROM "{target}"')
    (max_id,) = cursor.fetchone()
    if max_id > last_value or (max_id == last_value and not is_called):
        last_value, is_called = max_id, max_id > 0
    cursor.execute("SELECT setval(%s, %s, %s)", [new_seq, max(last_value, 1), is_called])
    cursor.execute(f'DROP TABLE "{source}"')
    if new_seq != f"public.{TABLE}_id_seq":
        cursor.execute(f"ALTER SEQUENCE {new_seq} RENAME TO {TABLE}_id_seq")
    for definition in indexes:
        cursor.execute(
            definition.replace(f"public.{source} ", f"public.{target} ").replace(f" {source} ", f" {target} ")
        )


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{OLD}"')
        cursor.execute(f'ALTER TABLE "{OLD}" RENAME CONSTRAINT "{TABLE}_pkey" TO "{OLD}_pkey"')
        cursor.execute(
            f'CREATE TABLE "{TABLE}" (LIKE "{OLD}" INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE) '
            "PARTITION BY RANGE (created_at)"
        )
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id, created_at)')
        cursor.execute(f"SELECT (min(created_at) AT TIME ZONE 'UTC')::date FROM \"{OLD}\"")
        today = datetime.now(UTC).date()
        day = min(cursor.fetchone()[0] or today, today)
        while day <= today + timedelta(days=AHEAD_DAYS):
            cursor.execute(_partition_sql(day))
            day += timedelta(days=1)
        cursor.execute(f'CREATE TABLE IF NOT EXISTS "{TABLE}_default" PARTITION OF "{TABLE}" DEFAULT')
        _move(cursor, OLD, TABLE)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{OLD}"')
        cursor.execute(f'ALTER TABLE "{OLD}" RENAME CONSTRAINT "{TABLE}_pkey" TO "{OLD}_pkey"')
        cursor.execute(f"ALTER SEQUENCE {TABLE}_id_seq RENAME TO {OLD}_id_seq")
        cursor.execute(f'CREATE TABLE "{TABLE}" (LIKE "{OLD}" INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE)')
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id)')
        _move(cursor, OLD, TABLE)


class Migration(migrations.Migration):
    dependencies = [
        ("broker_app", "0007_provider_api_base_url_connection_attention"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition),
        migrations.CreateModel(
            name="AuditSeal",
            fields=[
                ("day", models.DateField(primary_key=True, serialize=False)),
                ("head_id", models.BigIntegerField()),
                ("head_at", models.DateTimeField()),
                ("head_hash", models.CharField(max_length=64)),
                ("rows", models.BigIntegerField()),
                ("sealed_at", models.DateTimeField()),
            ],
        ),
        migrations.AddField(
            model_name="auditevent",
            name="chain_hash",
            field=models.CharField(blank=True, db_default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="prev_id",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="connection_id",
            field=models.CharField(max_length=64),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["connection_id", "created_at"], name="auditevent_connection_at"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["workspace", "created_at"], name="auditevent_workspace_at"),
        ),
    ]
