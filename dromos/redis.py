"""The one Redis client of a process, its one timeout and its one circuit breaker.

`client()` is a plain redis-py client (thread-safe, pooled) for REDIS_URL, built once per
process and URL, every call bounded by REDIS_TIMEOUT_SECONDS; None without REDIS_URL (the
embedded default). The gateway's API-key check and rate limit, the refresh sweep's
per-provider leases, the shared metrics and /readyz all use it.

The breaker: a caller that may do without Redis reports a failed call with `trip()` and asks
`resting()` before the next one. After a failure the process leaves Redis alone for
RETRY_SECONDS, so a Redis that hangs costs one REDIS_TIMEOUT_SECONDS now and then, not one
per call."""

from __future__ import annotations

import threading
import time

import redis
from django.conf import settings

RedisError = redis.RedisError
RETRY_SECONDS = 2.0

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()
_retry_at = 0.0


def client() -> redis.Redis | None:
    """This process's client for REDIS_URL, or None when REDIS_URL is not set."""
    url = settings.REDIS_URL
    if not url:
        return None
    found = _clients.get(url)
    if found is None:
        with _clients_lock:
            found = _clients.get(url)
            if found is None:
                timeout = settings.REDIS_TIMEOUT_SECONDS
                found = _clients[url] = redis.Redis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout
                )
    return found


def trip() -> None:
    """A call failed: rest Redis in this process for RETRY_SECONDS."""
    global _retry_at
    _retry_at = time.monotonic() + RETRY_SECONDS


def resting() -> bool:
    """True while this process leaves Redis alone after a failed call."""
    return time.monotonic() < _retry_at


def ping() -> bool | None:
    """Whether Redis answers now (readiness: always asks, breaker or not); None without REDIS_URL."""
    found = client()
    if found is None:
        return None
    try:
        return bool(found.ping())
    except RedisError:
        return False
