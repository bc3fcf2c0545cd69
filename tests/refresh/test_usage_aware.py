"""Usage-aware proactive refresh (issue 21): the sweep refreshes ahead of expiry only
connections whose current token has been read; idle ones get keep-alive refreshes as their
provider's idle policy needs; a read of an idle connection's expired token refreshes it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from broker_app.models import Connection
from broker_app.providers.spec import template
from broker_app.services import refresh as refresh_service
from broker_app.services import refresh_policy as policy
from broker_app.services import sweep
from broker_app.services.sweep import due_queryset, refresh_one, sweep_due
from tests.refresh.conftest import age


class _Task:
    def retry(self, **kwargs):
        raise AssertionError("no retry expected")


def test_keepalive_interval_follows_the_provider_idle_policy(settings):
    settings.REFRESH_KEEPALIVE_MIN_SECONDS = 86400
    settings.REFRESH_KEEPALIVE_DEFAULT_DAYS = 0
    assert policy.keepalive_interval(90) == timedelta(days=72)  # Microsoft: 90 days idle
    assert policy.keepalive_interval(180) == timedelta(days=144)  # Google: 6 months unused
    assert policy.keepalive_interval(7) == timedelta(days=5.6)
    assert policy.keepalive_interval(1) == timedelta(days=1)  # never more than once a day
    assert policy.keepalive_interval(None) is None  # unknown policy: no keep-alive by default
    settings.REFRESH_KEEPALIVE_DEFAULT_DAYS = 30
    assert policy.keepalive_interval(None) == timedelta(days=30)


def test_catalog_states_documented_idle_lifetimes():
    assert template("microsoft")["refresh_token_idle_days"] == 90
    assert template("google")["refresh_token_idle_days"] == 180
    assert "refresh_token_idle_days" not in template("salesforce")  # per org policy: unknown


def test_in_use_means_the_current_token_was_read_recently(settings):
    now = timezone.now()
    issued = now - timedelta(minutes=30)
    assert policy.in_use(last_read_at=issued + timedelta(minutes=1), refreshed_at=issued, now=now)
    assert not policy.in_use(last_read_at=issued - timedelta(seconds=1), refreshed_at=issued, now=now)
    assert not policy.in_use(last_read_at=None, refreshed_at=issued, now=now)
    # A 1-hour token first read late in its life: the connection reads about as often as its
    # tokens live, so its next read refreshes (no refresh ahead that nobody would use).
    expires = issued + timedelta(hours=1)
    assert policy.in_use(last_read_at=issued + timedelta(minutes=10), refreshed_at=issued, expires_at=expires, now=now)
    late = issued + timedelta(minutes=31)
    assert not policy.in_use(last_read_at=late, refreshed_at=issued, expires_at=expires, now=late)
    # A day-long token: any read of it counts.
    assert policy.in_use(last_read_at=late, refreshed_at=issued, expires_at=issued + timedelta(days=1), now=late)
    settings.REFRESH_ACTIVE_WINDOW = 600
    assert not policy.in_use(last_read_at=issued + timedelta(minutes=1), refreshed_at=issued, now=now)


def test_idle_connection_is_not_refreshed_ahead_and_is_parked(stack, fake_provider, active):
    key, cid = active
    age(cid, read=False)
    assert sweep_due(enqueue=False).connection_ids == [cid]
    assert refresh_one(task=_Task(), connection_id=cid) == "skipped"
    assert fake_provider.refresh_calls == 0
    row = Connection.objects.get(pk=cid)
    # Parked until its next look (no idle policy known for this provider: a day from now),
    # so later sweeps do not select it again every time a claim lapses.
    assert row.next_refresh_attempt_at >= timezone.now() + timedelta(hours=23)
    assert not due_queryset(now=timezone.now(), window_seconds=600).filter(pk=cid).exists()


def test_usage_aware_off_restores_the_old_rule(stack, fake_provider, active, settings):
    settings.REFRESH_USAGE_AWARE = False
    key, cid = active
    age(cid, read=False)
    assert refresh_one(task=_Task(), connection_id=cid) == "success"
    assert fake_provider.refresh_calls == 1


def test_plain_read_of_an_idle_connections_expired_token_refreshes_it(stack, fake_provider, active):
    key, cid = active
    age(cid, remaining=-5, read=False)
    stale = Connection.objects.get(pk=cid).access_token_enc
    response = stack.call("GET", f"/v1/token/{cid}", key)  # no auto_refresh
    assert response.status_code == 200, response.text
    assert fake_provider.refresh_calls == 1
    row = Connection.objects.get(pk=cid)
    assert row.access_token_enc != stale and row.expires_at > timezone.now() + timedelta(minutes=5)
    # The read that caused the refresh does not count as reading the new token.
    assert not policy.in_use(last_read_at=row.last_read_at, refreshed_at=row.last_refreshed_at)


def test_first_read_of_a_token_puts_it_back_on_proactive_refresh(stack, fake_provider, active):
    key, cid = active
    age(cid, remaining=3000, read=False)
    Connection.objects.filter(pk=cid).update(next_refresh_attempt_at=timezone.now() + timedelta(days=1))
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200
    row = Connection.objects.get(pk=cid)
    assert row.last_read_at is not None
    assert row.next_refresh_attempt_at == row.expires_at - timedelta(seconds=600)
    # Further reads within the hour write nothing.
    first = row.last_read_at
    assert stack.call("GET", f"/v1/token/{cid}", key).status_code == 200
    assert Connection.objects.get(pk=cid).last_read_at == first
    # Due ahead of expiry once the window is reached; then refreshed.
    age(cid, remaining=60)
    assert refresh_one(task=_Task(), connection_id=cid) == "success"


@pytest.mark.parametrize("days_since_refresh, outcome", [(6, "success"), (5, "skipped")])
def test_keepalive_refresh_for_an_idle_grant(stack, fake_provider, active, monkeypatch, days_since_refresh, outcome):
    """A provider whose refresh tokens die after 7 idle days: kept alive after 5.6 days."""
    monkeypatch.setattr(refresh_service, "idle_days", lambda provider: 7)
    monkeypatch.setattr(sweep, "idle_days", lambda provider: 7)
    key, cid = active
    age(cid, remaining=-(days_since_refresh * 86400 - 3600), read=False)
    assert refresh_one(task=_Task(), connection_id=cid) == outcome
    assert fake_provider.refresh_calls == (1 if outcome == "success" else 0)
    if outcome == "success":
        row = Connection.objects.get(pk=cid)
        # Next keep-alive 5.6 days on, unless a read puts it back on proactive refresh.
        assert row.next_refresh_attempt_at - row.last_refreshed_at == timedelta(days=5.6)
