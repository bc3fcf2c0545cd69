"""Fixtures of the refresh suite.

The root conftest empties the whole Redis database before every test; here that would also
drop the Celery queues and bindings that the real worker processes of
test_real_processes.py share with this process. So only the Django cache's keys and this
suite's own keys (metrics, provider slots) are removed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from broker_app.models import Connection
from tests.conftest import connect


@pytest.fixture(autouse=True)
def _clear_process_caches(settings):
    from gateway_app import services

    services.cache_clear()
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in (":*", "dromos:*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
    yield


def age(connection_id: str, *, remaining: int = 30, lifetime: int = 3600) -> None:
    """Make the stored token look `lifetime` seconds old with `remaining` seconds left
    (as if time had passed): auto_refresh and the sweep then see it as due."""
    now = timezone.now()
    Connection.objects.filter(pk=connection_id).update(
        expires_at=now + timedelta(seconds=remaining),
        last_refreshed_at=now + timedelta(seconds=remaining - lifetime),
        next_refresh_attempt_at=None,
    )


def outcome_counts(provider: str = "fake") -> dict[str, int]:
    from broker_app.metrics import REFRESH_OUTCOMES

    return {outcome: int(value) for (name, outcome), value in REFRESH_OUTCOMES.values().items()
            if name == provider and value}


@pytest.fixture
def active(stack, fake_provider, fake_provider_row):
    """(key, connection id) of an active connection to the fake provider."""
    key = stack.key()
    return key, connect(stack, fake_provider, key)
