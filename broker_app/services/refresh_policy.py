"""When to refresh, and how long to wait after a failure: pure rules, no I/O.

- auto_refresh (`token_read(auto_refresh=True, min_ttl=…)`): refresh when the token expires
  within the caller's `min_ttl`.
- proactive (the sweep): refresh `refresh_lead` before expiry — the sweep window, or half
  the token's lifetime when that is shorter, so a short-lived token is not refreshed again
  on every sweep. Tokens without an expiry are never due.
- coalescing: a forced refresh within COALESCE_SECONDS of the last one returns that result.
- backoff after a transient failure: 30 s, 1 min, 2 min … capped at 1 h, each drawn from its
  upper half, never shorter than the provider's Retry-After.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from dromos.backoff import exponential_backoff

# A forced refresh this soon after the last one returns that result: callers that arrive
# a moment apart (queued behind each other in a web server) still cause one provider refresh.
COALESCE_SECONDS = 5


def fresh(expires_at: datetime | None, min_ttl: int, *, now: datetime | None = None) -> bool:
    """The token stays valid for more than `min_ttl` seconds (no expiry: always fresh)."""
    return expires_at is None or expires_at - (now or timezone.now()) > timedelta(seconds=min_ttl)


def refresh_lead(*, expires_at: datetime, refreshed_at: datetime | None, window_seconds: int) -> timedelta:
    """How long before expiry the proactive refresh runs."""
    lead = timedelta(seconds=window_seconds)
    if refreshed_at is not None and expires_at > refreshed_at:
        lead = min(lead, (expires_at - refreshed_at) / 2)
    return lead


def next_proactive_attempt(
    *, expires_at: datetime | None, refreshed_at: datetime | None, window_seconds: int | None = None
) -> datetime | None:
    """When the sweep should next refresh a token with this expiry (None: never)."""
    if expires_at is None:
        return None
    window = settings.REFRESH_SWEEP_WINDOW_SECONDS if window_seconds is None else window_seconds
    return expires_at - refresh_lead(expires_at=expires_at, refreshed_at=refreshed_at, window_seconds=window)


def proactive_due(connection, *, window_seconds: int | None = None, now: datetime | None = None) -> bool:
    """Whether the sweep should refresh this connection now."""
    at = next_proactive_attempt(
        expires_at=connection.expires_at, refreshed_at=connection.last_refreshed_at, window_seconds=window_seconds
    )
    return at is not None and (now or timezone.now()) >= at


def due(connection, *, min_ttl: int | None, window_seconds: int | None = None) -> bool:
    """min_ttl given: the caller's threshold (auto_refresh); None: the sweep's rule."""
    if min_ttl is None:
        return proactive_due(connection, window_seconds=window_seconds)
    return not fresh(connection.expires_at, min_ttl)


def just_refreshed(connection, *, now: datetime | None = None) -> bool:
    """Refreshed (not merely activated) within COALESCE_SECONDS."""
    return bool(
        connection.token_version > 1
        and connection.last_refreshed_at
        and (now or timezone.now()) - connection.last_refreshed_at < timedelta(seconds=COALESCE_SECONDS)
    )


def backoff_delay(failures: int, retry_after: int | None = None) -> timedelta:
    """The wait after the `failures`-th transient failure in a row."""
    seconds = exponential_backoff(failures, base=30, cap=3600, jitter=0.5)
    return timedelta(seconds=max(seconds, retry_after or 0))
