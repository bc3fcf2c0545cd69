"""`manage.py refresh_due [--dry-run] [--provider NAME]` — one refresh sweep by hand."""

from __future__ import annotations

import time
from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from broker_app.services.refresh import token_refresh_due
from broker_app.services.sweep import sweep_due


class Command(BaseCommand):
    help = (
        "Refresh active connections whose token expires within the sweep window, the way the periodic "
        "sweep does (claim, single-flight refresh). By default the refreshes run here and the outcome is "
        "reported; --enqueue hands them to the Celery workers; --dry-run only lists what is due."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Only list what is due; change nothing")
        parser.add_argument("--provider", help="Only this provider")
        parser.add_argument(
            "--window",
            type=int,
            help=f"Seconds ahead (default REFRESH_SWEEP_WINDOW_SECONDS, {settings.REFRESH_SWEEP_WINDOW_SECONDS})",
        )
        parser.add_argument("--enqueue", action="store_true", help="Queue one task per connection instead")

    def handle(self, *args, **options):
        window = options["window"]
        if window is not None and window < 0:
            raise CommandError("--window must be 0 or more seconds")
        if window is not None and options["enqueue"]:
            raise CommandError("--window applies to refreshes run here; the workers use the configured window")
        provider = options["provider"]
        if provider:
            from broker_app.models import Provider

            if not Provider.objects.filter(name__iexact=provider).exists():
                raise CommandError(f"unknown provider {provider!r}")
        started = time.monotonic()
        result = sweep_due(
            window_seconds=window, provider_name=provider, dry_run=options["dry_run"], enqueue=options["enqueue"]
        )
        if options["dry_run"]:
            for connection_id in result.connection_ids:
                self.stdout.write(connection_id)
            self.stdout.write(f"due: {result.selected} (dry run, nothing changed)")
            return
        if options["enqueue"]:
            self.stdout.write(f"due: {result.selected}, queued: {result.queued}")
            return
        outcomes: Counter[str] = Counter()
        total = len(result.connection_ids)
        for index, connection_id in enumerate(result.connection_ids, 1):
            outcome = token_refresh_due(connection_id=connection_id, window_seconds=window).outcome.value
            outcomes[outcome] += 1
            if index % 100 == 0 or index == total:
                self.stderr.write(f"\r{index}/{total}", ending="")
        if total:
            self.stderr.write("")
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())) or "nothing due"
        self.stdout.write(f"due: {result.selected}; {summary} ({time.monotonic() - started:.1f}s)")
        if outcomes.get("transient") or outcomes.get("lock_timeout"):
            self.stdout.write(
                "transient failures keep their tokens and are retried by a later sweep after their backoff"
            )
