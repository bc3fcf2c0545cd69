"""Bulkheads: how many calls that may wait on a provider one key and one workspace may have in
flight in this gateway process.

Those calls (POST /v1/refresh, GET /v1/token?auto_refresh=true, the proxy) can hold a thread
for as long as a provider takes to answer. Without a bound, one key hammering a slow or
hanging provider takes every thread of the process and every other workspace waits behind it.
A call over the bound waits up to GATEWAY_SLOT_WAIT_SECONDS for a slot (fast calls free theirs
in milliseconds, so bursts of quick calls pass), then answers 429 `concurrency_limited` with
Retry-After, before any broker work. Plain token reads are not counted: they never wait on a
provider and the per-key rate limit bounds them.

The bound is per process: with G gateway processes one workspace holds at most
G × GATEWAY_SLOW_CALLS_PER_WORKSPACE broker threads; size the broker's threads above that.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from dromos.errors import ApiError


class ConcurrencyLimited(ApiError):
    status_code, code = 429, "concurrency_limited"


_in_flight: Counter[str] = Counter()
_changed = threading.Condition()


@contextmanager
def slow_call_slot(principal) -> Iterator[None]:
    """Hold one of the key's and one of the workspace's slots for the duration of the call."""
    bounds = [
        (f"key:{principal.prefix}", settings.GATEWAY_SLOW_CALLS_PER_KEY),
        (f"workspace:{principal.workspace}", settings.GATEWAY_SLOW_CALLS_PER_WORKSPACE),
    ]
    bounds = [(name, limit) for name, limit in bounds if limit > 0]
    deadline = time.monotonic() + settings.GATEWAY_SLOT_WAIT_SECONDS
    with _changed:
        while full := [name for name, limit in bounds if _in_flight[name] >= limit]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                scope = "API key" if full[0].startswith("key:") else "workspace"
                raise ConcurrencyLimited(
                    f"too many calls of this {scope} are waiting on providers; retry shortly", retry_after=1
                )
            _changed.wait(remaining)
        for name, _limit in bounds:
            _in_flight[name] += 1
    try:
        yield
    finally:
        with _changed:
            for name, _limit in bounds:
                _in_flight[name] -= 1
                if _in_flight[name] <= 0:
                    del _in_flight[name]
            _changed.notify_all()
