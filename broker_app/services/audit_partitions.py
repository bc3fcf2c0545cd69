"""The audit table's daily partitions on PostgreSQL (issue 20): created ahead, dropped after
AUDIT_RETENTION_DAYS. Run by the beat task `audit-partitions` and `manage.py audit partitions`.

No long locks. A partition is created as a table of its own and then attached (SHARE UPDATE
EXCLUSIVE on the parent: token reads keep inserting). An old one is detached, then dropped
once it is no longer part of the table. PostgreSQL refuses `DETACH PARTITION … CONCURRENTLY`
while a default partition exists, and this table keeps one (rows of a day without a
partition land there instead of failing the token read), so the detach takes the parent's
ACCESS EXCLUSIVE lock for an instant, under `lock_timeout` (AUDIT_PARTITION_LOCK_TIMEOUT_MS):
it never queues the token reads behind it longer than that, and is retried on the next
run when it could not get the lock. Without a default partition it runs CONCURRENTLY.
SQLite (the embedded default) has no partitions: everything here does nothing there."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from broker_app.models import AuditEvent, AuditSeal

logger = logging.getLogger(__name__)

TABLE = AuditEvent._meta.db_table
_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")


@dataclass
class PartitionReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # could not get the lock: retried next run
    default_rows: int = 0


def partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relkind FROM pg_class WHERE relname = %s AND relnamespace = 'public'::regnamespace", [TABLE]
        )
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


# Below this many rows an exact COUNT(*) is cheap enough for the admin's pages.
ESTIMATE_ABOVE = 1_000_000


def audit_rows_estimate() -> int | None:
    """PostgreSQL's estimate of the audit table's rows (the planner's statistics, summed
    over the partitions), or None where there is none (SQLite, never analysed)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        # A partitioned table's rows are its partitions' (its own reltuples repeats their sum).
        cursor.execute(
            "SELECT sum(greatest(c.reltuples, 0)), max(c.reltuples) FROM pg_class c WHERE c.relkind <> 'p' AND "
            "(c.oid = %s::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass))",
            [TABLE, TABLE],
        )
        total, most = cursor.fetchone()
    return int(total) if most is not None and most >= 0 else None


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def partition_days() -> dict[date, str]:
    """The daily partitions attached to the table, by day."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        names = [row[0] for row in cursor.fetchall()]
    days = {}
    for name in names:
        match = _NAME.match(name)
        if match:
            days[datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return days


def _has_default() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
            [TABLE],
        )
        return cursor.fetchone() is not None


def _lock_timeout(cursor) -> None:
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{settings.AUDIT_PARTITION_LOCK_TIMEOUT_MS}ms"])


def _create(day: date) -> bool:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    name, end = partition_name(day), start + timedelta(days=1)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _lock_timeout(cursor)
            cursor.execute(f'CREATE TABLE "{name}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING STORAGE)')
            cursor.execute(
                f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{name}" '
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
    except DatabaseError as exc:  # lock_timeout, or the default partition holds rows of that day
        logger.warning("audit partition %s not created: %s", name, exc.__class__.__name__)
        return False
    return True


def _drop(day: date, name: str, concurrently: bool) -> bool:
    try:
        if concurrently:  # not in a transaction block: autocommit
            with connection.cursor() as cursor:
                cursor.execute(f"SET lock_timeout = '{int(settings.AUDIT_PARTITION_LOCK_TIMEOUT_MS)}ms'")
                try:
                    cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{name}" CONCURRENTLY')
                finally:
                    cursor.execute("RESET lock_timeout")
        else:
            with transaction.atomic(), connection.cursor() as cursor:
                _lock_timeout(cursor)
                cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{name}"')
    except DatabaseError as exc:
        logger.warning("audit partition %s not detached: %s", name, exc.__class__.__name__)
        return False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE "{name}"')  # no longer part of the table: locks nobody
        AuditSeal.objects.filter(day=day).delete()
    return True


def audit_partitions_maintain(*, today: date | None = None) -> PartitionReport:
    """Create the partitions of today and AUDIT_PARTITIONS_AHEAD_DAYS ahead, drop those
    wholly older than AUDIT_RETENTION_DAYS (0: keep everything)."""
    report = PartitionReport()
    if not partitioned():
        return report
    today = today or datetime.now(UTC).date()
    existing = partition_days()
    for offset in range(settings.AUDIT_PARTITIONS_AHEAD_DAYS + 1):
        day = today + timedelta(days=offset)
        if day not in existing:
            (report.created if _create(day) else report.skipped).append(partition_name(day))
    retention = settings.AUDIT_RETENTION_DAYS
    if retention > 0:
        oldest_kept = today - timedelta(days=retention)
        concurrently = not _has_default()
        for day, name in sorted(existing.items()):
            if day < oldest_kept:
                (report.dropped if _drop(day, name, concurrently) else report.skipped).append(name)
        AuditSeal.objects.filter(day__lt=oldest_kept).delete()
    if _has_default():
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{TABLE}_default" LIMIT 1000) d')  # noqa: S608  # nosec B608
            report.default_rows = cursor.fetchone()[0]
    if report.default_rows:
        logger.warning("the audit table's default partition holds rows: days without a partition")
    return report
