"""The per-key rate limit behind API_KEY_RATE_LIMIT: a sliding-window counter in Redis
(gateway_app.ratelimit.rate_limit_hit), one round trip per request, atomic across workers."""

from __future__ import annotations

import secrets
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from dromos import redis as shared_redis
from gateway_app import ratelimit
from gateway_app.authentication import parse_rate


@pytest.fixture
def clock(monkeypatch):
    """Wall-clock time the limiter sees, set by the test (windows of 60 s start at multiples of 60)."""
    now = {"t": 1_800_000_000.0 + 30}  # 30 s into a window
    monkeypatch.setattr(ratelimit.time, "time", lambda: now["t"])
    return now


def _key() -> str:
    return f"test:rate:{secrets.token_hex(6)}"


def test_limit_then_refusal_with_the_wait_until_the_window_allows_again(clock):
    key = _key()
    assert [ratelimit.rate_limit_hit(key=key, limit=3, window=60) for _ in range(3)] == [None, None, None]
    assert ratelimit.rate_limit_hit(key=key, limit=3, window=60) == pytest.approx(30)  # this window is full
    # 10 s into the next window the previous one still weighs 50/60: 3 × 5/6 + 1 > 3.
    clock["t"] += 40
    wait = ratelimit.rate_limit_hit(key=key, limit=3, window=60)
    assert wait == pytest.approx(10)
    clock["t"] += wait
    assert ratelimit.rate_limit_hit(key=key, limit=3, window=60) is None  # 3 × 4/6 + 1 = 3


def test_refused_requests_are_not_counted(clock):
    key = _key()
    for _ in range(3):
        assert ratelimit.rate_limit_hit(key=key, limit=3, window=60) is None
    for _ in range(20):  # a client hammering while throttled …
        assert ratelimit.rate_limit_hit(key=key, limit=3, window=60) is not None
    clock["t"] += 50  # 20 s into the next window: 3 × 40/60 + 1 = 3
    assert ratelimit.rate_limit_hit(key=key, limit=3, window=60) is None  # … is not locked out for longer


def test_counting_is_atomic_under_concurrency(clock):
    key = _key()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: ratelimit.rate_limit_hit(key=key, limit=50, window=60), range(120)))
    assert sum(result is None for result in results) == 50


def test_rate_strings():
    assert parse_rate("600/min") == (600, 60)
    assert parse_rate("10/s") == (10, 1)
    assert parse_rate("5000/hour") == (5000, 3600)
    assert parse_rate("100000/day") == (100000, 86400)


def _check(key: str, limit: int = 3):
    return ratelimit.revoked_or_rate_limited(marker=f"{key}:revoked", key=key, limit=limit, window=60)


def test_the_fast_path_check_on_its_kept_connection_survives_a_flushed_script_and_a_dropped_connection(clock):
    """revoked_or_rate_limited keeps one Redis connection per thread (issue 20): a script
    Redis forgot is loaded again, a connection Redis dropped is replaced, and neither trips
    the breaker or skips the count."""
    client = shared_redis.client()
    key = _key()
    assert _check(key) == (False, None)  # the script known, this thread's connection made
    client.script_flush()
    assert _check(key) == (False, None)
    own = ratelimit._lane.connection
    client.client_kill_filter(_id=_client_id(own))
    assert _check(key) == (False, None)
    assert not shared_redis.resting()
    assert _check(key) == (False, pytest.approx(30))  # all three counted: the fourth waits
    client.set(f"{key}:revoked", 1)
    assert _check(key) == (True, None)


def _client_id(connection) -> int:
    connection.send_command("CLIENT", "ID")
    return connection.read_response()


def test_the_fast_path_check_gives_up_at_once_on_a_refused_connection(clock, monkeypatch):
    key = _key()
    assert _check(key) == (False, None)
    client = shared_redis.client()
    refused = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_timeout=0.5, socket_connect_timeout=0.5)
    monkeypatch.setattr(shared_redis, "client", lambda: refused)
    monkeypatch.setattr(shared_redis, "_retry_at", 0.0)
    assert _check(key) is None  # not usable: the caller leaves the request to the full path
    assert shared_redis.resting()  # and Redis rests
    monkeypatch.setattr(shared_redis, "_retry_at", 0.0)
    monkeypatch.setattr(shared_redis, "client", lambda: client)
    assert _check(key) == (False, None)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
