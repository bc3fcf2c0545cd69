"""The one Redis client of a process, its one timeout and its one circuit breaker.

`client()` is a plain redis-py client (thread-safe, pooled) for REDIS_URL, built once per
process and URL, every call bounded by REDIS_TIMEOUT_SECONDS; None without REDIS_URL (the
embedded default). The gateway's API-key check and rate limit, the refresh sweep's
per-provider leases, the shared metrics and /readyz all use it.

The breaker: a caller that may do without Redis reports a failed call with `trip()` and asks
`resting()` before the next one. After a failure the process leaves Redis alone for
RETRY_SECONDS, so a Redis that hangs costs one REDIS_TIMEOUT_SECONDS now and then, not one
per call.

redis-py 8 imports OpenTelemetry's metrics SDK when it is installed, for Redis metrics of its
own that Dromos never turns on (Dromos' Redis metrics are Prometheus'; its traces use the
tracing SDK, dromos/tracing.py). `_import_redis` keeps that SDK out of every process that
imports redis first through this module: 48 modules, ≈1.4 MiB resident per process
(docs/benchmarks.md). redis-py then reports its own OpenTelemetry metrics as unavailable."""

from __future__ import annotations

import sys
import threading
import time
from types import ModuleType

from django.conf import settings

_UNUSED_BY_REDIS = "opentelemetry.sdk.metrics"


def _import_redis() -> ModuleType:
    """`import redis` with OpenTelemetry's metrics SDK reported missing while redis-py loads
    (its import is optional: `try: … except ImportError`), unless something loaded either
    already. Anything imported afterwards finds the SDK as usual."""
    if "redis" in sys.modules or _UNUSED_BY_REDIS in sys.modules:
        import redis

        return redis
    sys.modules[_UNUSED_BY_REDIS] = None  # an import of it raises ImportError
    try:
        import redis
    finally:
        if sys.modules.get(_UNUSED_BY_REDIS, False) is None:
            del sys.modules[_UNUSED_BY_REDIS]
    return redis


redis = _import_redis()

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
