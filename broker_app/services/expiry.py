"""Grant ends: warn before a refresh token's absolute end, fail the connection when it ends.

A refresh token's end (`refresh_expires_at`) comes from the provider's
`refresh_token_expires_in` or, failing that, the catalog's `refresh_token_lifetime_days`.
The beat task `grant_expiry` (every 5 minutes) sends `connection.expiring` once per end when
it is within EXPIRY_WARNING_DAYS, and `connection.expired` (the connection fails with
`grant_expired`) once it has passed. Both walk the partial index `conn_active_grant_end`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from broker_app.models import Connection
from broker_app.services.lifecycle import connection_expire, connection_warn_expiring

BATCH = 1000

__all__ = ["ExpiryResult", "grant_expiry_check", "warning_window"]


@dataclass
class ExpiryResult:
    warned: int = 0
    expired: int = 0


def warning_window() -> timedelta:
    return timedelta(days=settings.EXPIRY_WARNING_DAYS)


def grant_expiry_check(*, batch: int = BATCH) -> ExpiryResult:
    """One pass: expire what has ended, warn about what ends within the window."""
    result = ExpiryResult()
    now = timezone.now()
    active = Connection.objects.filter(status=Connection.Status.ACTIVE, refresh_expires_at__isnull=False)
    for connection in active.filter(refresh_expires_at__lte=now).select_related("provider")[:batch]:
        result.expired += connection_expire(connection=connection)
    ending = active.filter(
        refresh_expires_at__gt=now, refresh_expires_at__lte=now + warning_window(), expiry_warned_at__isnull=True
    )
    for connection in ending.select_related("provider")[:batch]:
        result.warned += connection_warn_expiring(connection=connection)
    return result
