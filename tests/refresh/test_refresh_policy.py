"""refresh_policy's pure rules (no database, no clock but the one passed in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from broker_app.services import refresh_policy as policy

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def row(*, expires_in: float | None, lifetime: float = 3600, token_version: int = 2, refreshed_ago=None):
    """A connection-shaped object: a token `lifetime` seconds long expiring in `expires_in`."""
    expires_at = None if expires_in is None else NOW + timedelta(seconds=expires_in)
    if refreshed_ago is not None:
        refreshed_at = NOW - timedelta(seconds=refreshed_ago)
    else:
        refreshed_at = None if expires_at is None else expires_at - timedelta(seconds=lifetime)
    # Read a second after it was stored: a connection in use (the usage-aware rule of issue 21).
    read_at = None if refreshed_at is None else refreshed_at + timedelta(seconds=1)
    return SimpleNamespace(
        expires_at=expires_at, last_refreshed_at=refreshed_at, last_read_at=read_at, token_version=token_version
    )


@pytest.mark.parametrize(
    ("expires_in", "min_ttl", "expected"),
    [(None, 86400, True), (61, 60, True), (60, 60, False), (30, 60, False), (-5, 0, False), (1, 0, True)],
)
def test_fresh_means_strictly_more_than_min_ttl_left(expires_in, min_ttl, expected):
    expires_at = None if expires_in is None else NOW + timedelta(seconds=expires_in)
    assert policy.fresh(expires_at, min_ttl, now=NOW) is expected


def test_refresh_lead_is_the_window_or_half_the_lifetime_when_shorter():
    expires_at = NOW + timedelta(hours=1)
    one_hour_token = policy.refresh_lead(expires_at=expires_at, refreshed_at=NOW, window_seconds=600)
    assert one_hour_token == timedelta(seconds=600)
    short = policy.refresh_lead(expires_at=NOW + timedelta(seconds=30), refreshed_at=NOW, window_seconds=600)
    assert short == timedelta(seconds=15)
    unknown_age = policy.refresh_lead(expires_at=expires_at, refreshed_at=None, window_seconds=600)
    assert unknown_age == timedelta(seconds=600)


def test_next_proactive_attempt_and_proactive_due(settings):
    settings.REFRESH_SWEEP_WINDOW_SECONDS = 600
    assert policy.next_proactive_attempt(expires_at=None, refreshed_at=None) is None
    assert not policy.proactive_due(row(expires_in=None), now=NOW)
    assert policy.proactive_due(row(expires_in=599), now=NOW)
    assert not policy.proactive_due(row(expires_in=601), now=NOW)
    # A 30 s token is due at half its life, not on every sweep.
    assert not policy.proactive_due(row(expires_in=16, lifetime=30), now=NOW)
    assert policy.proactive_due(row(expires_in=15, lifetime=30), now=NOW)
    assert policy.proactive_due(row(expires_in=700), window_seconds=800, now=NOW)


def test_due_uses_min_ttl_when_given_else_the_sweeps_rule(settings):
    settings.REFRESH_SWEEP_WINDOW_SECONDS = 600
    now = timezone.now()  # due() reads the clock
    token = SimpleNamespace(
        expires_at=now + timedelta(seconds=120),
        last_refreshed_at=now - timedelta(seconds=3480),
        last_read_at=now - timedelta(seconds=3479),  # in use: read just after it was stored
        token_version=2,
    )
    assert policy.due(token, min_ttl=300) and not policy.due(token, min_ttl=60)
    assert policy.due(token, min_ttl=None)  # 120 s left < the 600 s window
    assert not policy.due(token, min_ttl=None, window_seconds=60)


@pytest.mark.parametrize(
    ("token_version", "refreshed_ago", "expected"),
    [
        (2, 0, True),
        (2, policy.COALESCE_SECONDS - 0.1, True),
        (2, policy.COALESCE_SECONDS, False),
        (2, 60, False),
        (1, 0, False),  # activated, never refreshed: not a refresh to coalesce with
    ],
)
def test_just_refreshed_is_a_refresh_within_coalesce_seconds(token_version, refreshed_ago, expected):
    token = row(expires_in=30, token_version=token_version, refreshed_ago=refreshed_ago)
    assert policy.just_refreshed(token, now=NOW) is expected


def test_just_refreshed_without_a_refresh_time():
    token = SimpleNamespace(expires_at=NOW, last_refreshed_at=None, token_version=5)
    assert not policy.just_refreshed(token, now=NOW)


def test_backoff_doubles_from_30_s_to_a_one_hour_cap_and_honours_retry_after():
    for failures, (low, high) in {1: (15, 30), 2: (30, 60), 3: (60, 120), 20: (1800, 3600)}.items():
        for _ in range(20):
            assert low <= policy.backoff_delay(failures).total_seconds() <= high
    assert policy.backoff_delay(1, retry_after=900).total_seconds() == 900
