"""The per-key rate limit: a sliding-window counter in the shared Redis (or the embedded
cache without Redis). Redis unreachable: the limit is not enforced (logged at most every
10 s per process and counted in dromos_degraded_total), and the process leaves Redis alone
for a moment (dromos.redis)."""

from __future__ import annotations

import time

from django.core.cache import cache

from dromos import redis as shared_redis
from gateway_app.metrics import degraded

UNENFORCED = "Redis unreachable: the per-key rate limit is not enforced"


def rate_limit_hit(*, key: str, limit: int, window: int) -> float | None:
    """Count one request against `limit` per `window` seconds; None when it is allowed,
    else the seconds to wait. A sliding-window counter in the shared cache: this window's
    count plus the previous window's, weighted by how much of it still overlaps the last
    `window` seconds. One round trip, atomic across processes, and the same small cost
    whatever the limit (DRF's SimpleRateThrottle stores, reads and rewrites the timestamp of
    every request in the window). A refused request is not counted."""
    now = time.time()
    slot = int(now // window)
    elapsed = now - slot * window
    current, previous = f"{key}:{slot}", f"{key}:{slot - 1}"
    client = shared_redis.client()
    if client is not None:
        if shared_redis.resting():
            degraded("rate_limit", UNENFORCED)
            return None
        try:
            with client.pipeline(transaction=False) as pipe:
                count, _, before = pipe.incr(current).expire(current, 2 * window + 1).get(previous).execute()
        except shared_redis.RedisError:
            degraded("rate_limit", UNENFORCED, failed=True)
            return None
    else:
        cache.add(current, 0, timeout=2 * window + 1)
        count, before = cache.incr(current), cache.get(previous)
    before = int(before or 0)
    weight = (window - elapsed) / window
    if before * weight + count <= limit:
        return None
    if client is not None:
        try:
            client.decr(current)
        except shared_redis.RedisError:
            pass  # the count expires with its window
    else:
        cache.decr(current)
    if count > limit or before == 0:
        return window - elapsed  # this window alone is full: wait for the next one
    # Wait until the previous window's weight leaves room for one more request.
    room = (limit - count) / before  # weight at which one more request fits
    return max(0.0, (window - elapsed) - room * window)
