"""When to refresh, and how long to wait after a failure: pure rules, no I/O.

- auto_refresh (`token_read(auto_refresh=True, min_ttl=…)`): refresh when the token expires
  within the caller's `min_ttl`.
- proactive (the sweep): refresh `refresh_lead` before expiry — the sweep window, or half
  the token's lifetime when that is shorter, so a short-lived token is not refreshed again
  on every sweep. Tokens without an expiry are never due.
- usage-aware (REFRESH_USAGE_AWARE, the default): that proactive refresh is only for a
  connection *in use* (`in_use`): its current token has been read since it was stored
  (last_read_at > last_refreshed_at), within REFRESH_ACTIVE_WINDOW, and, for a token living
  2 h or less, in the first half of its life. Why not merely "read within 24 h": with 1-hour
  tokens a connection read once a day would get ~24 refreshes for one read; under this rule
  it gets the one refresh its read causes, and one read hourly gets one per read. A token
  nobody read is not replaced ahead of time: the next read refreshes it (reads.token_read
  refreshes a token expiring within READ_REFRESH_MIN_TTL on every read, auto_refresh or
  not), so no read is ever served an expired token.
- keep-alive (idle connections): a refresh when the last one is `keepalive_interval` old —
  the provider's idle lifetime (refresh_token_idle_days) less a margin of a fifth of it
  (at least a day), never shorter than REFRESH_KEEPALIVE_MIN_SECONDS (1 day); where the
  idle lifetime is unknown, every REFRESH_KEEPALIVE_DEFAULT_DAYS (0: never).
- coalescing: a forced refresh within COALESCE_SECONDS of the last one returns that result.
- backoff after a transient failure: 30 s, 1 min, 2 min … capped at 1 h, each drawn from its
  upper half, never shorter than the provider's Retry-After.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from dromos.backoff import exponential_backoff
from dromos.wire import MACHINE_FLOWS

# A forced refresh this soon after the last one returns that result: callers that arrive
# a moment apart (queued behind each other in a web server) still cause one provider refresh.
COALESCE_SECONDS = 5


def renewable(connection) -> bool:
    """A new token can be had without the user: by its refresh token, or by a machine
    grant (issue 18: client_credentials, jwt_bearer, github_app)."""
    return bool(connection.refresh_token_enc) or connection.flow in MACHINE_FLOWS


def fresh(expires_at: datetime | None, min_ttl: int, *, now: datetime | None = None) -> bool:
    """The token stays valid for more than `min_ttl` seconds (no expiry: always fresh)."""
    return expires_at is None or expires_at - (now or timezone.now()) > timedelta(seconds=min_ttl)


def refresh_lead(*, expires_at: datetime, refreshed_at: datetime | None, window_seconds: int) -> timedelta:
    """How long before expiry the proactive refresh runs."""
    lead = timedelta(seconds=window_seconds)
    if refreshed_at is not None and expires_at > refreshed_at:
        lead = min(lead, (expires_at - refreshed_at) / 2)
    return lead


# A plain read (no auto_refresh) of a token expiring within this many seconds refreshes it
# first: under the usage-aware rule an idle connection's token is left to expire.
READ_REFRESH_MIN_TTL = 60
# last_read_at is written at most this often (and on the first read of each new token).
READ_MARK_SECONDS = 3600
IDLE_RECHECK = timedelta(days=1)


def token_read_since_refresh(*, last_read_at: datetime | None, refreshed_at: datetime | None) -> bool:
    """The current token has been served at least once: a read after it was stored (the read
    that caused a refresh came before the token it got, and does not count)."""
    return last_read_at is not None and (refreshed_at is None or last_read_at > refreshed_at)


def in_use(
    *,
    last_read_at: datetime | None,
    refreshed_at: datetime | None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """Worth refreshing ahead of expiry: the current token has been read, within
    REFRESH_ACTIVE_WINDOW, and — for a token living 2 h or less — in the first half of its
    life. The last part is what separates a connection read more often than its tokens
    live (a fresh token ready saves its next read a provider round trip) from one read
    about as often or less (the next read would find the token expired anyway, so a
    refresh ahead is a provider call nobody uses; its next read refreshes instead). For
    longer tokens the hourly read mark cannot tell when in the token's life the first read
    came, and any read of the current token counts."""
    if not token_read_since_refresh(last_read_at=last_read_at, refreshed_at=refreshed_at):
        return False
    if (now or timezone.now()) - last_read_at > timedelta(seconds=settings.REFRESH_ACTIVE_WINDOW):
        return False
    if refreshed_at is not None and expires_at is not None and expires_at > refreshed_at:
        lifetime = expires_at - refreshed_at
        if lifetime <= timedelta(seconds=2 * READ_MARK_SECONDS):
            return last_read_at - refreshed_at <= lifetime / 2
    return True


def read_mark_due(*, last_read_at: datetime | None, refreshed_at: datetime | None, now: datetime) -> bool:
    """Whether a read should write last_read_at: the first read of this token, or an hour on."""
    if not token_read_since_refresh(last_read_at=last_read_at, refreshed_at=refreshed_at):
        return True
    return now - last_read_at >= timedelta(seconds=READ_MARK_SECONDS)


def keepalive_interval(idle_days: int | None) -> timedelta | None:
    """How often an idle connection is refreshed only to keep its grant alive (None: never)."""
    floor = timedelta(seconds=settings.REFRESH_KEEPALIVE_MIN_SECONDS)
    if not idle_days:
        default = settings.REFRESH_KEEPALIVE_DEFAULT_DAYS
        return max(timedelta(days=default), floor) if default else None
    idle = timedelta(days=idle_days)
    return max(idle - max(idle / 5, timedelta(days=1)), floor)


def next_proactive_attempt(
    *,
    expires_at: datetime | None,
    refreshed_at: datetime | None,
    window_seconds: int | None = None,
    last_read_at: datetime | None = None,
    idle_days: int | None = None,
    usage_aware: bool | None = None,
    now: datetime | None = None,
) -> datetime | None:
    """When the sweep should next refresh this connection (None: never): ahead of expiry
    while in use (or with REFRESH_USAGE_AWARE off), else at its next keep-alive — except
    that a read of the current token makes it due ahead of expiry again (the read path
    moves next_refresh_attempt_at then)."""
    usage_aware = settings.REFRESH_USAGE_AWARE if usage_aware is None else usage_aware
    ahead = None
    if expires_at is not None:
        window = settings.REFRESH_SWEEP_WINDOW_SECONDS if window_seconds is None else window_seconds
        ahead = expires_at - refresh_lead(expires_at=expires_at, refreshed_at=refreshed_at, window_seconds=window)
    now = now or timezone.now()
    if not usage_aware or in_use(last_read_at=last_read_at, refreshed_at=refreshed_at, expires_at=expires_at, now=now):
        return ahead
    interval = keepalive_interval(idle_days)
    if interval is None:
        # Nothing to keep alive: looked at again in a day (a read makes it due before).
        return None if expires_at is None else now + IDLE_RECHECK
    return (refreshed_at or now) + interval


def proactive_due(
    connection, *, window_seconds: int | None = None, now: datetime | None = None, idle_days: int | None = None
) -> bool:
    """Whether the sweep should refresh this connection now."""
    at = next_proactive_attempt(
        expires_at=connection.expires_at,
        refreshed_at=connection.last_refreshed_at,
        window_seconds=window_seconds,
        last_read_at=connection.last_read_at,
        idle_days=idle_days,
        now=now,
    )
    return at is not None and (now or timezone.now()) >= at


def due(connection, *, min_ttl: int | None, window_seconds: int | None = None, idle_days: int | None = None) -> bool:
    """min_ttl given: the caller's threshold (auto_refresh); None: the sweep's rule."""
    if min_ttl is None:
        return proactive_due(connection, window_seconds=window_seconds, idle_days=idle_days)
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
