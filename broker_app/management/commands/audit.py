"""`manage.py audit partitions|seal|verify|export` — the audit log at scale (issue 20)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from broker_app.services.audit_chain import audit_export_lines, audit_seal, audit_verify
from broker_app.services.audit_partitions import audit_partitions_maintain, partitioned


def parse_moment(raw: str | None, flag: str) -> datetime | None:
    """A date (2026-11-29: its midnight UTC) or an ISO 8601 date-time (UTC when it names no zone)."""
    if raw is None:
        return None
    try:
        moment = parse_datetime(raw)
        if moment is None:
            day = parse_date(raw)
            moment = datetime(day.year, day.month, day.day) if day else None
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"{flag} must be a date (2026-11-29) or an ISO 8601 date-time, not {raw!r}")
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "The audit log: `partitions` creates the daily partitions ahead and drops those past "
        "AUDIT_RETENTION_DAYS (PostgreSQL); `seal` hash-chains the rows written since the last seal; "
        "`verify` recomputes the chains and names the first row changed or deleted (exit code 1); "
        "`export` writes rows as NDJSON for a SIEM."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{partitions,seal,verify,export}")
        sub.add_parser("partitions", help="Create partitions ahead, drop those past AUDIT_RETENTION_DAYS")
        seal = sub.add_parser("seal", help="Hash-chain the rows not yet sealed (as the beat task audit-seal)")
        seal.add_argument("--batch", type=int, default=5000, help="Rows per transaction (default 5000)")
        verify = sub.add_parser("verify", help="Check the hash chains; exit code 1 names the first bad row")
        verify.add_argument("--since", help="First day to check (date or date-time, UTC); default: the oldest")
        verify.add_argument("--until", help="Last day to check (date or date-time, UTC); default: the newest")
        export = sub.add_parser("export", help="Rows created in [--since, --until) as NDJSON on stdout")
        export.add_argument("--since", required=True, help="Date or ISO 8601 date-time (UTC unless zoned)")
        export.add_argument("--until", help="Date or ISO 8601 date-time, excluded (default: now)")
        export.add_argument("--output", help="Write to this file instead of stdout")

    def handle(self, *args, **options):
        getattr(self, f"_{options['action']}")(options)

    def _partitions(self, options):
        if not partitioned():
            self.stdout.write("the audit table is not partitioned (SQLite, or not migrated): nothing to do")
            return
        report = audit_partitions_maintain()
        for name in report.created:
            self.stdout.write(f"created {name}")
        for name in report.dropped:
            self.stdout.write(f"dropped {name}")
        for name in report.skipped:
            self.stderr.write(f"skipped {name} (lock not granted in time, or rows in the default partition)")
        if report.default_rows:
            self.stderr.write(
                f"the default partition holds rows ({report.default_rows}{'+' if report.default_rows >= 1000 else ''})"
            )
        self.stdout.write(f"partitions: {len(report.created)} created, {len(report.dropped)} dropped")

    def _seal(self, options):
        if options["batch"] < 1:
            raise CommandError("--batch must be at least 1")
        result = audit_seal(batch=options["batch"])
        self.stdout.write(f"sealed {result.sealed} row(s) created before {result.cutoff.isoformat()}")

    def _verify(self, options):
        since, until = parse_moment(options["since"], "--since"), parse_moment(options["until"], "--until")
        result = audit_verify(since=since, until=until)
        if result.problem:
            self.stderr.write(f"audit chain broken: {result.problem}")
            sys.exit(1)
        self.stdout.write(f"audit chain intact: {result.rows} sealed row(s) in {result.days} day(s)")

    def _export(self, options):
        since = parse_moment(options["since"], "--since")
        until = parse_moment(options["until"], "--until") or timezone.now()
        if until <= since:
            raise CommandError("--until must be after --since")
        lines = audit_export_lines(since=since, until=until)
        if not options["output"]:
            for line in lines:
                self.stdout.write(line)
            return
        with open(options["output"], "w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
