"""The per-key rate limit: a sliding-window counter in the shared Redis (or the embedded
cache without Redis). Redis unreachable: the limit is not enforced (logged at most every
10 s per process and counted in dromos_degraded_total), and the process leaves Redis alone
for a moment (dromos.redis)."""

from __future__ import annotations

import threading
import time

import redis
from django.core.cache import cache

from dromos import redis as shared_redis
from gateway_app.metrics import degraded

UNENFORCED = "Redis unreachable: the per-key rate limit is not enforced"


# The revocation marker and the sliding-window count in one round trip, atomically: a
# revoked key is not counted, a refused request is not counted (its increment is undone).
_CHECK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0, 0} end
local count = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local before = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if before * tonumber(ARGV[2]) + count > tonumber(ARGV[3]) then redis.call('DECR', KEYS[2]) end
return {0, count, before}
"""
_scripts: dict[int, object] = {}


def revoked_or_rate_limited(*, marker: str, key: str, limit: int, window: int) -> tuple[bool, float | None] | None:
    """The API key's revocation marker and its rate-limit count in one Redis round trip (the
    token fast path, issue 20; a Lua script): (revoked, seconds to wait or None), the same
    verdicts as apikey_verify followed by rate_limit_hit. None when Redis is not usable (not
    configured, resting after a failure, failing now): the caller leaves the request to the
    full path, which logs and counts the degradation."""
    client = shared_redis.client()
    if client is None or shared_redis.resting():
        return None
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_CHECK)
    now = time.time()
    slot = int(now // window)
    elapsed = now - slot * window
    try:
        revoked, count, before = _evalsha(
            client,
            script,
            [marker, f"{key}:{slot}", f"{key}:{slot - 1}"],
            [2 * window + 1, (window - elapsed) / window, limit],
        )
    except shared_redis.RedisError:
        shared_redis.trip()  # rest Redis: the full path then degrades without waiting on it again
        return None
    if revoked:
        return True, None
    return False, _verdict(count, before, limit=limit, window=window, elapsed=elapsed)


class _Lane(threading.local):
    """This thread's own connection to the client's Redis, for the script (issue 20)."""

    client = None
    connection = None
    used = False  # it has answered since it last connected


_lane = _Lane()


def _evalsha(client, script, keys: list, args: list):
    """EVALSHA of `script` on this thread's own connection: one of redis-py's connections,
    made as the client's pool makes them (address, database, password, TLS, timeouts, health
    checks), kept by the thread instead of being taken from and returned to the pool on every
    call (with redis-py's retry wrapper, that was most of the round trip's CPU). A connection
    that fails on its first send after being idle (Redis restarted, an idle timeout) is
    reconnected once, as the client's retry would; any other failure (a timeout, a refused
    connection) disconnects and raises at once, so a hanging Redis costs one
    REDIS_TIMEOUT_SECONDS. A script Redis does not know (restarted, flushed) is loaded again."""
    connection = _lane.connection
    if connection is None or _lane.client is not client:
        pool = client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        _lane.client, _lane.connection, _lane.used = client, connection, False
    command = connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
    for attempt in range(2):
        try:
            connection.send_packed_command(command)
            reply = connection.read_response()
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            client.script_load(script.script)
            continue
        except redis.exceptions.ConnectionError:
            connection.disconnect()
            stale, _lane.used = _lane.used, False
            if attempt or not stale:
                raise
            continue
        except BaseException:
            connection.disconnect()  # a timeout or an interruption: its reply may still come
            _lane.used = False
            raise
        _lane.used = True
        return reply
    raise AssertionError("unreachable")


def _verdict(count: int, before: int, *, limit: int, window: int, elapsed: float) -> float | None:
    """None when `count` in this window (and `before` in the previous one, weighted by its
    overlap with the last `window` seconds) is within `limit`; else the seconds to wait."""
    weight = (window - elapsed) / window
    if before * weight + count <= limit:
        return None
    if count > limit or before == 0:
        return window - elapsed  # this window alone is full: wait for the next one
    # Wait until the previous window's weight leaves room for one more request.
    room = (limit - count) / before  # weight at which one more request fits
    return max(0.0, (window - elapsed) - room * window)


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
    wait = _verdict(count, before, limit=limit, window=window, elapsed=elapsed)
    if wait is None:
        return None
    if client is not None:
        try:
            client.decr(current)
        except shared_redis.RedisError:
            pass  # the count expires with its window
    else:
        cache.decr(current)
    return wait
