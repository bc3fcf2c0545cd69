"""`manage.py rotate_token_keys [--check] [--batch-size N]` — re-encrypt every stored secret
(connections' tokens and PKCE verifiers, providers' client secrets, webhook signing secrets)
under the first key of TOKEN_ENCRYPTION_KEYS.

Online: each batch is one short transaction that locks only its own rows and skips rows
another transaction holds (`FOR UPDATE SKIP LOCKED`): a refresh in flight is never
blocked, and the rows it held are retried in a later pass. Progress goes to stderr, the
summary to stdout. `--check` changes nothing and reports how many values each key still
protects; it exits 1 while any value remains under a retired or unknown key, so a script
can tell when the old key may be dropped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Count, Model, Q
from django.db.models.functions import Substr

from broker_app import crypto
from broker_app.models import Connection, Provider, WebhookEndpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    label: str
    model: type[Model]
    fields: tuple[str, ...]
    aad: Callable[[Model, str], str]


TARGETS = (
    Target(
        "connections",
        Connection,
        (
            "access_token_enc",
            "refresh_token_enc",
            "id_token_enc",
            "pkce_verifier_enc",
            "device_code_enc",
            "grant_secret_enc",
        ),
        lambda row, name: row.aad(name.removesuffix("_enc")),
    ),
    Target(
        "providers",
        Provider,
        ("client_secret_enc", "private_key_enc"),
        lambda row, name: (
            crypto.private_key_aad(row.pk) if name == "private_key_enc" else crypto.client_secret_aad(row.pk)
        ),
    ),
    Target("webhooks", WebhookEndpoint, ("secret_enc",), lambda row, name: crypto.webhook_secret_aad(row.pk)),
)


@dataclass
class Tally:
    rotated: int = 0
    failed: set = field(default_factory=set)


def _stale(target: Target, ring: crypto.KeyRing) -> Q:
    """Rows holding at least one value that is not under the primary key."""
    condition = Q()
    for name in target.fields:
        condition |= Q(**{f"{name}__gt": ""}) & ~Q(**{f"{name}__startswith": ring.primary_prefix})
    return condition


class Progress:
    """A one-line progress bar on stderr."""

    WIDTH = 30

    def __init__(self, stream, label: str, total: int) -> None:
        self.stream, self.label, self.total, self.done = stream, label, total, 0

    def advance(self, count: int) -> None:
        self.done += count
        filled = self.WIDTH * min(self.done, self.total) // max(self.total, 1)
        self.stream.write(
            f"\r{self.label:<12} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} rows", ending=""
        )
        self.stream.flush()

    def close(self) -> None:
        if self.total:
            self.stream.write("")


class Command(BaseCommand):
    help = "Re-encrypt every stored token, client secret and webhook secret under the first TOKEN_ENCRYPTION_KEYS key."

    def add_arguments(self, parser):
        parser.add_argument(
            "--check",
            action="store_true",
            help="Change nothing; report values per key and exit 1 while any retired key is in use",
        )
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction (default 500)")
        parser.add_argument(
            "--passes", type=int, default=3, help="Passes over rows that were locked by a refresh in flight (default 3)"
        )

    def handle(self, *args, **options):
        ring = crypto.keyring()
        if options["check"]:
            return self._check(ring)
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        tallies = {target.label: Tally() for target in TARGETS}
        for target in TARGETS:
            self._rotate(target, ring, tallies[target.label], options["batch_size"], options["passes"])
        rotated = ", ".join(f"{tally.rotated} {label}" for label, tally in tallies.items())
        self.stdout.write(f"re-encrypted under key {ring.primary_id}: {rotated}")
        remaining = self._remaining(ring)
        failed = sum(len(tally.failed) for tally in tallies.values())
        self.stdout.write(
            f"rows remaining under retired or unknown keys: {sum(remaining.values())} "
            f"({', '.join(f'{label} {count}' for label, count in remaining.items())})"
        )
        if failed:
            self.stdout.write(
                f"rows that did not decrypt with any configured key: {failed} (see the log for their ids)"
            )
        if sum(remaining.values()):
            raise CommandError(
                "some rows are still under retired keys; run the command again "
                "(rows locked by a refresh) or restore the missing key (rows that do not decrypt)"
            )

    def _rotate(self, target: Target, ring: crypto.KeyRing, tally: Tally, batch: int, passes: int) -> None:
        stale = _stale(target, ring)
        queryset = target.model.objects.filter(stale)
        progress = Progress(self.stderr, target.label, queryset.count())
        skipped: list = []
        cursor = None
        while True:
            window = queryset.order_by("pk")
            if cursor is not None:
                window = window.filter(pk__gt=cursor)
            ids = list(window.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            cursor = ids[-1]
            done = self._rotate_batch(target, ring, stale, ids, tally)
            skipped.extend(set(ids) - done)
            progress.advance(len(done))
        for _ in range(passes):
            if not skipped:
                break
            time.sleep(0.2)
            retry, skipped = skipped, []
            for start in range(0, len(retry), batch):
                ids = retry[start : start + batch]
                done = self._rotate_batch(target, ring, stale, ids, tally)
                skipped.extend(set(ids) - done)
                progress.advance(len(done))
        progress.close()

    def _rotate_batch(self, target: Target, ring: crypto.KeyRing, stale: Q, ids: list, tally: Tally) -> set:
        """Re-encrypt the rows of `ids` this transaction can lock; return the ids handled
        (rotated, found already current, or undecryptable)."""
        handled = set()
        with transaction.atomic():
            rows = (
                target.model.objects.select_for_update(skip_locked=True).filter(pk__in=ids).only("pk", *target.fields)
            )
            locked = {row.pk: row for row in rows}
            current = set(target.model.objects.filter(pk__in=list(locked)).filter(stale).values_list("pk", flat=True))
            handled.update(set(locked) - current)  # rotated meanwhile (a refresh wrote new tokens)
            for pk in current:
                row = locked[pk]
                changes = {}
                try:
                    for name in target.fields:
                        value = getattr(row, name)
                        if value and not ring.is_current(value):
                            changes[name] = ring.reencrypt(value, aad=target.aad(row, name))
                except crypto.DecryptionError:
                    # The id, never the value: an operator can look at the row in the admin.
                    logger.error(
                        "row does not decrypt with any configured key", extra={"table": target.label, "row_id": str(pk)}
                    )
                    tally.failed.add(pk)
                    handled.add(pk)
                    continue
                # update(), not save(): a key rotation is not a change to the connection.
                target.model.objects.filter(pk=pk).update(**changes)
                tally.rotated += 1
                handled.add(pk)
        return handled

    def _remaining(self, ring: crypto.KeyRing) -> dict[str, int]:
        return {target.label: target.model.objects.filter(_stale(target, ring)).count() for target in TARGETS}

    def _check(self, ring: crypto.KeyRing) -> None:
        usage: Counter = Counter()
        for target in TARGETS:
            for name in target.fields:
                rows = (
                    target.model.objects.exclude(**{name: ""})
                    .annotate(kid=Substr(name, 4, 8))
                    .values("kid")
                    .annotate(n=Count("pk"))
                    .order_by()
                )
                for row in rows:
                    usage[row["kid"]] += row["n"]
        for kid in ring.key_ids:
            role = "primary" if kid == ring.primary_id else "retired"
            self.stdout.write(f"key {kid} ({role}): {usage.pop(kid, 0)} values")
        for kid, count in sorted(usage.items()):
            self.stdout.write(f"key {kid} (NOT CONFIGURED: these values cannot be decrypted): {count} values")
        remaining = self._remaining(ring)
        total = sum(remaining.values())
        self.stdout.write(
            f"rows remaining under retired or unknown keys: {total} "
            f"({', '.join(f'{label} {count}' for label, count in remaining.items())})"
        )
        if total:
            raise CommandError(f"{total} rows still use retired or unknown keys; run rotate_token_keys")
