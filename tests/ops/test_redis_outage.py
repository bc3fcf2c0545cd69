"""Redis goes away under a running gateway and broker (real gunicorn processes): agents keep
getting their tokens, answers stay fast, the rate limit is skipped (and counted), a key
revoked meanwhile is still refused within API_KEY_CACHE_SECONDS, readiness reports it; once
Redis is back the rate limit holds again, without a restart.

Both processes reach Redis through a TCP relay (tests/support/relay.py) the test cuts, or
makes hang (a Redis that accepts connections and never answers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from oidc_server import free_port  # noqa: I001  (devtools/, on sys.path via conftest)
from relay import Relay
from stack import Stack, reset_postgres_database  # noqa: I001  (devtools/, on sys.path via conftest)

from tests.ops.conftest import ROOT, sibling_database

LIMIT = 3  # requests per minute per key, for this stack
CACHE_SECONDS = 2  # API_KEY_CACHE_SECONDS, for this stack
UNKNOWN = "/v1/token/c_" + "x" * 32


@pytest.fixture(scope="module")
def redis_relayed_stack(tmp_path_factory):
    database_url = sibling_database("redis_outage")
    reset_postgres_database(database_url)
    redis_url = os.environ.get("OUTAGE_REDIS_URL", "redis://127.0.0.1:6379/5")
    parts = urlsplit(redis_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 6379))
    relayed_url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{relay.port}"))
    stack = Stack(
        workdir=tmp_path_factory.mktemp("redis-outage"),
        database_url=database_url,
        redis_url=relayed_url,
        celery=False,
        beat=False,
        gateway_workers=1,
        broker_workers=1,
        oidc_port=free_port(),
        extra_env={"API_KEY_RATE_LIMIT": f"{LIMIT}/min", "API_KEY_CACHE_SECONDS": str(CACHE_SECONDS)},
    )
    stack.start()
    yield stack, relay
    stack.stop()
    relay.close()


def _new_key(stack: Stack, name: str) -> str:
    return (
        stack.manage("gateway", "apikey", "create", "--workspace", "demo", "--name", name)
        .stdout.strip()
        .splitlines()[-1]
    )


def _fetch(stack: Stack, key: str) -> requests.Response:
    return requests.get(stack.gateway_url + UNKNOWN, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + 30
    while requests.get(stack.gateway_url + "/readyz", headers=stack.ops_headers(), timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "readiness did not recover 30 s after Redis came back"
        time.sleep(0.5)


def _degraded(stack: Stack, component: str) -> float:
    text = requests.get(stack.gateway_url + "/metrics", headers=stack.ops_headers(), timeout=30).text
    found = re.search(rf'^dromos_degraded_total{{component="{component}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_redis_outage_degrades_and_recovers(redis_relayed_stack):
    stack, relay = redis_relayed_stack
    cached, limited, fresh, after = (_new_key(stack, name) for name in ("cached", "limited", "fresh", "after"))
    assert _fetch(stack, cached).status_code == 404  # verified once: now in the gateway's key cache
    assert [_fetch(stack, limited).status_code for _ in range(LIMIT + 1)] == [404] * LIMIT + [429]

    relay.cut()
    try:
        started = time.monotonic()
        statuses = [_fetch(stack, key).status_code for key in (cached, fresh) for _ in range(LIMIT + 2)]
        elapsed = time.monotonic() - started
        # Served, never throttled or failed, and without waiting on Redis (10 requests).
        assert statuses == [404] * (2 * (LIMIT + 2)), statuses
        assert elapsed < 5, f"{elapsed:.1f} s for 10 requests while Redis is down"
        assert _degraded(stack, "rate_limit") >= 2 * (LIMIT + 2)
        assert _degraded(stack, "revocation_marker") >= 1
        # The broker does not need Redis to serve a token read.
        direct = requests.get(
            stack.broker_url + "/internal/v1/connections/c_" + "x" * 32 + "/token",
            timeout=30,
            headers={"X-API-Key": stack.env["BROKER_API_KEY"], "X-Dromos-Workspace": "demo"},
        )
        assert direct.status_code == 404
        ready = requests.get(stack.gateway_url + "/readyz", headers=stack.ops_headers(), timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False

        # Revoking still works (the marker cannot be written, the command says what that means) …
        revoked = stack.manage("gateway", "apikey", "revoke", "--prefix", cached.split("_")[1])
        assert f"revoked {cached.split('_')[1]}" in revoked.stdout
        assert "Redis unreachable: the revocation is saved" in revoked.stderr
        # … and the gateway refuses the key once its cached copy expires.
        deadline = time.monotonic() + CACHE_SECONDS + 5
        while _fetch(stack, cached).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key still served after API_KEY_CACHE_SECONDS"
            time.sleep(0.2)
    finally:
        relay.restore()

    _wait_ready(stack)
    time.sleep(2.5)  # a process leaves Redis alone for 2 s after its last failed call
    assert [_fetch(stack, after).status_code for _ in range(LIMIT + 1)] == [404] * LIMIT + [429]
    logs = stack.log("gateway")
    assert "Redis unreachable: the per-key rate limit is not enforced" in logs
    assert "Traceback" not in logs


def test_a_hanging_redis_costs_its_timeout_now_and_then_not_per_request(redis_relayed_stack):
    """REDIS_TIMEOUT_SECONDS (1 s) bounds a call; after a failure the process leaves Redis
    alone for 2 s, so a hanging Redis does not add 2 × 1 s to every request."""
    stack, relay = redis_relayed_stack
    key = _new_key(stack, "hanging")
    assert _fetch(stack, key).status_code == 404
    relay.hang()
    try:
        timings = []
        for _ in range(20):
            started = time.monotonic()
            assert _fetch(stack, key).status_code == 404
            timings.append(time.monotonic() - started)
            time.sleep(0.1)
        slow = [t for t in timings if t > 0.5]
        assert max(timings) < 2.5, timings  # never more than the timeout (plus the request itself)
        assert len(slow) <= 3, timings  # ~3 s of requests: one slow request per 2 s pause at most
    finally:
        relay.restore()
    _wait_ready(stack)


QUEUE_UNDER_HANGING_REDIS = """
import logging, sys, time
import django
django.setup()
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
from broker_app.webhooks import _queue
started = time.monotonic()
_queue("00000000-0000-0000-0000-000000000000")
print(f"returned after {time.monotonic() - started:.1f} s")
"""


def test_queueing_a_webhook_while_redis_hangs_gives_up_in_bounded_time(redis_relayed_stack):
    """A request that commits a state change queues its webhook deliveries (after the commit):
    with Redis hanging, that gives up within seconds (the retry sweep delivers it later),
    instead of holding the request, and its gunicorn thread, indefinitely."""
    stack, relay = redis_relayed_stack
    relay.hang()
    try:
        env = {**stack.env, "DJANGO_SETTINGS_MODULE": "dromos.settings.broker"}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", QUEUE_UNDER_HANGING_REDIS],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
    finally:
        relay.restore()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "webhook delivery not queued" in result.stdout + result.stderr
    assert elapsed < 20, f"queueing waited {elapsed:.0f} s on a hanging Redis"
