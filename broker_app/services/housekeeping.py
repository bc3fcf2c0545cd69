"""Housekeeping: fail stale pending connections, retry deferred revocations."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from broker_app.models import Connection
from broker_app.services.lifecycle import connection_fail
from broker_app.services.revocation import revocation_retry


def pending_prune(*, older_than_seconds: int = 0, dry_run: bool = False) -> int:
    """Mark pending connections whose consent window has closed as failed (state_expired)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    # Device connections expire in their own poll (failed `expired_token`, services/device.py).
    stale = Connection.objects.filter(status=Connection.Status.PENDING, state_expires_at__lt=cutoff).exclude(
        flow="device"
    )
    count = 0
    for connection in stale.select_related("provider").iterator():
        count += 1
        if not dry_run:
            connection_fail(
                connection=connection, error="state_expired", description="consent was not completed in time"
            )
    return count


def revocations_retry() -> int:
    done = 0
    for connection_id in Connection.objects.filter(revoke_pending=True).values_list("id", flat=True)[:500]:
        done += bool(revocation_retry(connection_id=connection_id))
    return done
