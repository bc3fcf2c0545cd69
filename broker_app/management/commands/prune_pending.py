"""`manage.py prune_pending [--dry-run] [--older-than 1h]` — fail stale pending connections."""

from __future__ import annotations

import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from broker_app.models import Connection
from broker_app.services.lifecycle import connection_fail

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> int:
    """Seconds from "90", "90s", "15m", "2h" or "7d"."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", raw or "")
    if not match:
        raise CommandError(f"--older-than must look like 90, 90s, 15m, 2h or 7d, not {raw!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


class Command(BaseCommand):
    help = (
        "Mark pending connections whose consent window (OAUTH_STATE_TTL_SECONDS) has closed as failed "
        "with error state_expired, as the beat task prune-pending does every 5 minutes. Their agents "
        "then see status failed instead of waiting forever."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="List what would be pruned, change nothing")
        parser.add_argument(
            "--older-than",
            default="0",
            metavar="DURATION",
            help="Only connections whose consent window closed at least this long ago "
            "(90, 90s, 15m, 2h, 7d; default 0: every closed window)",
        )

    def handle(self, *args, **options):
        older_than = parse_duration(options["older_than"])
        cutoff = timezone.now() - timedelta(seconds=older_than)
        # The selection of broker_app.services.housekeeping.pending_prune, walked here
        # one row at a time so a large backlog shows progress.
        stale = (
            Connection.objects.filter(status=Connection.Status.PENDING, state_expires_at__lt=cutoff)
            .select_related("provider")
            .order_by("state_expires_at")
        )
        total = stale.count()
        if options["dry_run"]:
            for connection in stale.iterator():
                self.stdout.write(
                    f"{connection.id}\t{connection.workspace}\t{connection.provider.name}\t"
                    f"window closed {connection.state_expires_at:%Y-%m-%dT%H:%M:%SZ}"
                )
            self.stdout.write(f"stale pending connections: {total} (dry run, nothing changed)")
            return
        done = 0
        for connection in stale.iterator(chunk_size=500):
            connection_fail(
                connection=connection, error="state_expired", description="consent was not completed in time"
            )
            done += 1
            if done % 500 == 0 or done == total:
                self.stderr.write(f"\rpruned {done}/{total}", ending="")
        if done:
            self.stderr.write("")
        self.stdout.write(f"pruned {done} stale pending connection(s)")
