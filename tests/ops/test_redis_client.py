"""One Redis client per process (dromos/redis.py): every part that talks to Redis (the
gateway's key check and rate limit, the sweep's per-provider leases, the shared refresh
metrics, /readyz) gives up on a Redis that hangs after REDIS_TIMEOUT_SECONDS, and the
parts that can do without it leave it alone for a moment after a failed call."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
from django.test.utils import override_settings

from broker_app.metrics import REFRESH_OUTCOMES
from broker_app.services import sweep
from dromos import redis as shared_redis
from gateway_app import ratelimit

TIMEOUT = 0.3


@pytest.fixture
def hanging_redis():
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    with override_settings(REDIS_URL=url, REDIS_TIMEOUT_SECONDS=TIMEOUT):
        yield url
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()
    shared_redis._clients.pop(url, None)
    shared_redis._retry_at = 0.0


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_every_part_gives_up_on_a_hanging_redis_after_the_one_timeout(hanging_redis):
    with pytest.raises(redis.TimeoutError):
        started = time.monotonic()
        sweep._lease_acquire("hanging-provider")
    assert time.monotonic() - started < TIMEOUT + 0.5
    assert sweep._redis() is shared_redis.client()  # one client, not one per part

    ready, elapsed = _timed(shared_redis.ping)
    assert ready is False and elapsed < TIMEOUT + 0.5

    before = REFRESH_OUTCOMES.values().get(("hanging-provider", "success"), 0)
    shared_redis._retry_at = 0.0
    _, elapsed = _timed(lambda: REFRESH_OUTCOMES.labels(provider="hanging-provider", outcome="success").inc())
    assert elapsed < TIMEOUT + 0.5
    # The failed call rested Redis: the next ones neither wait nor get lost.
    _, elapsed = _timed(lambda: REFRESH_OUTCOMES.labels(provider="hanging-provider", outcome="success").inc())
    assert elapsed < 0.1
    allowed, elapsed = _timed(lambda: ratelimit.rate_limit_hit(key="test:hanging", limit=1, window=60))
    assert allowed is None and elapsed < 0.1  # not enforced while Redis rests
    with override_settings(REDIS_URL=None):
        assert REFRESH_OUTCOMES.values()[("hanging-provider", "success")] == before + 2


@pytest.mark.live  # a Python child process: a fresh interpreter's imports
def test_redis_loads_without_opentelemetry_metrics_sdk():
    """redis-py would import OpenTelemetry's metrics SDK for metrics Dromos never enables;
    the client module keeps it out, and anything imported later still finds it."""
    probe = (
        "import sys\n"
        "from dromos import redis as shared\n"
        "import redis.observability.providers as providers\n"
        "assert 'redis' in sys.modules and shared.redis is sys.modules['redis']\n"
        "assert 'opentelemetry.sdk.metrics' not in sys.modules, 'metrics SDK loaded'\n"
        "assert providers.OTEL_AVAILABLE is False\n"
        "import opentelemetry.sdk.metrics, opentelemetry.sdk.trace\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dromos.settings.gateway"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
