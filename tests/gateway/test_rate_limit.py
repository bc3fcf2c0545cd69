"""The per-key rate limit behind API_KEY_RATE_LIMIT: a sliding-window counter in Redis
(gateway_app.ratelimit.rate_limit_hit), one round trip per request, atomic across workers."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest

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
