"""Failed API-key authentications, throttled per source address.

Every failed authentication (unknown, wrong or revoked key, malformed header) counts one
against the source address (REMOTE_ADDR: the peer of the gateway's socket) in a fixed window
of the shared cache. Once an address has API_KEY_AUTH_FAILURE_LIMIT failures in the current
window (default 30/min), every authentication from it that would need a database lookup is
answered 429 `rate_limited` with `Retry-After` (the rest of the window) before that lookup:
guessing keys costs the gateway one Redis read, never a query. A key this process verified
in the last API_KEY_CACHE_SECONDS is still accepted (no lookup needed), so agents already
working from a shared address are not cut off by someone guessing from it.

Behind a reverse proxy every client has the proxy's address: raise the limit there or set
API_KEY_AUTH_FAILURE_LIMIT=off. Redis unreachable: not enforced (fails open, like the
per-key rate limit), counted in dromos_degraded_total{component="auth_throttle"}."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache

from dromos.errors import Throttled
from gateway_app.metrics import AUTH_THROTTLED, DEGRADED

logger = logging.getLogger(__name__)

# After a failed cache call this process leaves the throttle alone for a moment, so a Redis
# that hangs costs one REDIS_TIMEOUT_SECONDS now and then, not one per authentication.
RETRY_SECONDS = 2.0
_retry_at = 0.0


def _limit() -> tuple[int, int] | None:
    from gateway_app.authentication import parse_rate

    rate = (settings.API_KEY_AUTH_FAILURE_LIMIT or "off").strip().lower()
    return None if rate in ("off", "0", "none") else parse_rate(rate)


def _window(window: int) -> tuple[int, float]:
    now = time.time()
    slot = int(now // window)
    return slot, window - (now - slot * window)


def _counter(address: str, slot: int) -> str:
    return f"authfail:{address}:{slot}"


def _degraded(*, failed: bool) -> None:
    global _retry_at
    DEGRADED.labels(component="auth_throttle").inc()
    if failed:
        _retry_at = time.monotonic() + RETRY_SECONDS
        logger.warning("Redis unreachable: failed API-key authentications are not throttled")


def _resting() -> bool:
    if time.monotonic() < _retry_at:
        _degraded(failed=False)
        return True
    return False


def refuse_if_blocked(address: str) -> None:
    """Raise 429 (Throttled, with retry_after) when `address` has used up its failures."""
    limit = _limit()
    if limit is None or not address or _resting():
        return
    count, window = limit
    slot, remaining = _window(window)
    try:
        failures = cache.get(_counter(address, slot)) or 0
    except Exception:  # noqa: BLE001 - any cache failure: fail open
        _degraded(failed=True)
        return
    if int(failures) >= count:
        AUTH_THROTTLED.labels(reason="address").inc()
        raise Throttled(
            "Too many failed API-key authentications from this address; retry later.",
            retry_after=max(1, int(remaining + 0.999)),
        )


def record_failure(address: str) -> None:
    """Count one failed authentication from `address`."""
    limit = _limit()
    if limit is None or not address or _resting():
        return
    _count, window = limit
    slot, _remaining = _window(window)
    key = _counter(address, slot)
    try:
        cache.add(key, 0, timeout=window + 1)
        cache.incr(key)
    except ValueError:
        pass  # expired between add and incr: the next failure starts the new window
    except Exception:  # noqa: BLE001 - any cache failure: fail open
        _degraded(failed=True)
