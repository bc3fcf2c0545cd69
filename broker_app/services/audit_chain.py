"""Tamper evidence for the audit trail (issue 20): one hash chain per day (a day is a
partition on PostgreSQL), sealed off the hot path, verified on demand; and the NDJSON export.

Sealing (`audit_seal`: beat task `audit-seal`, `manage.py audit seal`) walks the rows not
yet sealed in (created_at, id) order and gives each `prev_id` (the row before it in its day's
chain, NULL for the first) and `chain_hash` = sha256(previous row's chain_hash + the row's
canonical JSON). One `AuditSeal` per day holds the chain's head (last id, its hash, the
number of rows), so deleting a day's last rows is detected as well as any other.

Only rows created before the cutoff are sealed: AUDIT_SEAL_DELAY_SECONDS ago, and on
PostgreSQL no later than the start of the oldest transaction still open on the database. A
row's created_at is taken inside the transaction that inserts it, so every row before the
cutoff is committed and visible when the sealer reads: none can appear later behind the
chain's head (the delay also absorbs clock skew between application hosts and the database).

`audit_verify` recomputes the chains and names the first row that was changed, deleted or
inserted behind the seal. What it proves and what not: docs/operations.md#audit-log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from broker_app.models import AuditEvent, AuditSeal

_ROW = ("id", "created_at", "connection_id", "workspace", "actor", "action", "ip", "detail")
_SEAL_LOCK = 0x6175646974  # pg_advisory_xact_lock key: one sealer at a time


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: tuple) -> bytes:
    """The row's content as hashed (and exported): fixed field order, compact sorted JSON."""
    values = dict(zip(_ROW, row, strict=True))
    values["created_at"] = _stamp(values["created_at"])
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_next(prev_hash: str, row: tuple) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(row)).hexdigest()


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _day_range(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def seal_cutoff() -> datetime:
    cutoff = timezone.now() - timedelta(seconds=settings.AUDIT_SEAL_DELAY_SECONDS)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )
            oldest = cursor.fetchone()[0]
        if oldest is not None:
            cutoff = min(cutoff, oldest)
    return cutoff


@dataclass
class SealResult:
    sealed: int
    cutoff: datetime


def _store(updates: list[tuple[str, int | None, int, datetime]]) -> None:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    if connection.vendor != "postgresql":  # a plain table: the id is the key
        updates = [(chain_hash, prev_id, row_id) for chain_hash, prev_id, row_id, _ in updates]
        with connection.cursor() as cursor:
            cursor.executemany(f"UPDATE {table} SET chain_hash = %s, prev_id = %s WHERE id = %s", updates)  # noqa: S608  # nosec B608
        return
    # One statement per batch; created_at bounds the partitions the planner looks at.
    hashes, prev_ids, ids, moments = (list(column) for column in zip(*updates, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} t SET chain_hash = v.h, prev_id = v.p "  # noqa: S608  # nosec B608 - table name from the model
            "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::timestamptz[]) AS v(h, p, id, at) "
            "WHERE t.id = v.id AND t.created_at = v.at AND t.created_at >= %s AND t.created_at <= %s",
            [hashes, prev_ids, ids, moments, min(moments), max(moments)],
        )
        if cursor.rowcount != len(updates):  # a row deleted meanwhile: roll the batch back
            raise RuntimeError(f"audit seal updated {cursor.rowcount} of {len(updates)} rows")


def audit_seal(*, batch: int = 5000, limit: int | None = None) -> SealResult:
    """Seal the rows created before the cutoff, in batches of `batch` rows, each batch one
    transaction; stop after `limit` rows (None: all)."""
    cutoff, sealed = seal_cutoff(), 0
    while limit is None or sealed < limit:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SEAL_LOCK])
            head = AuditSeal.objects.order_by("-day").first()
            rows = AuditEvent.objects.filter(created_at__lt=cutoff)
            if head is not None:
                rows = rows.filter(Q(created_at__gt=head.head_at) | Q(created_at=head.head_at, id__gt=head.head_id))
            size = batch if limit is None else min(batch, limit - sealed)
            rows = list(rows.order_by("created_at", "id").values_list(*_ROW)[:size])
            if not rows:
                break
            seals: dict[date, AuditSeal] = {}
            updates = []
            for row in rows:
                day = day_of(row[1])
                seal = seals.get(day)
                if seal is None:
                    seal = AuditSeal.objects.filter(day=day).first() or AuditSeal(
                        day=day, head_id=0, head_hash="", rows=0
                    )
                    seals[day] = seal
                prev_id = seal.head_id if seal.rows else None
                seal.head_hash = chain_next(seal.head_hash, row)
                seal.head_id, seal.head_at, seal.rows = row[0], row[1], seal.rows + 1
                updates.append((seal.head_hash, prev_id, row[0], row[1]))
            _store(updates)
            now = timezone.now()
            for seal in seals.values():
                seal.sealed_at = now
                seal.save()
            sealed += len(rows)
        if len(rows) < size:
            break
    return SealResult(sealed=sealed, cutoff=cutoff)


@dataclass
class VerifyResult:
    days: int
    rows: int
    problem: str | None = None  # the first row changed, deleted or inserted, in words
    row_id: int | None = None


def _exists(row_id: int) -> bool:
    return AuditEvent.objects.filter(id=row_id).exists()


def _verify_day(seal: AuditSeal) -> tuple[int, str | None, int | None]:
    start, end = _day_range(seal.day)
    rows = (
        AuditEvent.objects.filter(created_at__gte=start, created_at__lt=end)
        .filter(Q(created_at__lt=seal.head_at) | Q(created_at=seal.head_at, id__lte=seal.head_id))
        .order_by("created_at", "id")
        .values_list(*_ROW, "chain_hash", "prev_id")
    )
    last_id, last_hash, count = None, "", 0
    for row in rows.iterator(chunk_size=5000):
        *content, chain_hash, prev_id = row
        row_id = content[0]
        count += 1
        if not chain_hash:
            return count, f"row {row_id} was inserted after its day was sealed (not in the chain)", row_id
        if prev_id != last_id:
            missing = prev_id if prev_id is not None else last_id
            if prev_id is not None and not _exists(prev_id):
                return count, f"row {prev_id} was deleted (row {row_id} follows it in the chain)", prev_id
            return count, f"row {missing} was changed or moved (the chain at row {row_id} does not follow it)", missing
        expected = chain_next(last_hash, tuple(content))
        if expected != chain_hash:
            return count, f"row {row_id} was changed (its hash does not match its content)", row_id
        last_id, last_hash = row_id, chain_hash
    if last_id != seal.head_id:
        if not _exists(seal.head_id):
            return count, f"row {seal.head_id} was deleted (the last sealed row of {seal.day})", seal.head_id
        return count, f"row {seal.head_id} was changed or moved (the last sealed row of {seal.day})", seal.head_id
    if last_hash != seal.head_hash or count != seal.rows:
        return count, f"the seal of {seal.day} does not match its rows (row {last_id})", last_id
    return count, None, None


def audit_verify(*, since: datetime | None = None, until: datetime | None = None) -> VerifyResult:
    """Recompute each sealed day's chain from `since` to `until` (whole days), oldest first;
    stop at the first problem."""
    seals = AuditSeal.objects.order_by("day")
    if since is not None:
        seals = seals.filter(day__gte=day_of(since))
    if until is not None:
        seals = seals.filter(day__lte=day_of(until))
    result = VerifyResult(days=0, rows=0)
    for seal in seals.iterator():
        count, problem, row_id = _verify_day(seal)
        result.days += 1
        result.rows += count
        if problem:
            result.problem, result.row_id = problem, row_id
            return result
    return result


_EXPORT = (*_ROW, "chain_hash", "prev_id")


def audit_export_lines(*, since: datetime, until: datetime, **filters: str) -> Iterator[str]:
    """The rows created in [since, until) as NDJSON lines, oldest first, read through a
    server-side cursor (constant memory on PostgreSQL). Audit rows never hold a token.
    `filters`: exact workspace, connection_id, actor, action (the management API's export)."""
    rows = (
        AuditEvent.objects.filter(created_at__gte=since, created_at__lt=until, **filters)
        .order_by("created_at", "id")
        .values_list(*_EXPORT)
    )
    for row in rows.iterator(chunk_size=2000):
        values = dict(zip(_EXPORT, row, strict=True))
        values["created_at"] = _stamp(values["created_at"])
        yield json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
