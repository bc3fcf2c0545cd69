"""Prometheus metrics of the broker (exposed at /metrics).

Refresh outcomes happen mostly in Celery workers, which serve no HTTP. So that the broker's
/metrics shows them, `REFRESH_OUTCOMES` keeps its counts in one Redis hash shared by every
broker process and worker (on any machine); without Redis (the embedded default) or while
Redis is unreachable it counts in the process (after a failed call it leaves Redis alone for a
moment: dromos.redis)."""

from __future__ import annotations

import logging
import threading
from collections import Counter as _Tally

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from dromos import redis as shared_redis

logger = logging.getLogger(__name__)

CONNECTIONS_STARTED = Counter("dromos_connections_started_total", "Connections requested", ["provider"])
CONNECTIONS_ACTIVATED = Counter("dromos_connections_activated_total", "Connections activated", ["provider"])
CONNECTIONS_FAILED = Counter("dromos_connections_failed_total", "Connections failed", ["provider", "reason"])
CONNECTIONS_REVOKED = Counter("dromos_connections_revoked_total", "Connections revoked", ["provider"])
TOKEN_READS = Counter("dromos_token_reads_total", "Token reads served", ["provider"])
REFRESH_SECONDS = Histogram("dromos_refresh_seconds", "Provider refresh call latency", ["provider"])

REFRESH_OUTCOME_HELP = (
    "Refresh attempts by outcome: success (one provider refresh), coalesced (waited for another caller's "
    "refresh and used it), skipped (no longer due), lost_race (invalid_grant, but another refresh had "
    "already stored new tokens), invalid_grant (connection failed), transient (5xx, timeout, 429: tokens "
    "kept, retried later), rejected (other provider error), invalid_id_token, lock_timeout, busy (another "
    "refresh in progress and enough callers waiting: answered at once), interrupted (an earlier refresh died "
    "after reaching a rotating provider: connection failed with refresh_interrupted)"
)


class SharedCounter:
    """A labelled counter summed over every process through a Redis hash."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], redis_key: str) -> None:
        self.name, self.documentation, self.labelnames, self.redis_key = name, documentation, labelnames, redis_key
        self._local: _Tally[tuple[str, ...]] = _Tally()
        self._lock = threading.Lock()

    def labels(self, **labels: str) -> _Child:
        return _Child(self, tuple(str(labels[name]) for name in self.labelnames))

    def inc(self, values: tuple[str, ...], amount: int = 1) -> None:
        client = shared_redis.client()
        if client is not None and not shared_redis.resting():
            try:
                client.hincrby(self.redis_key, "|".join(values), amount)
                return
            except Exception:  # a metrics store outage must never fail a refresh
                shared_redis.trip()
                logger.warning("metrics store unreachable; counting in process", extra={"metric": self.name})
        with self._lock:
            self._local[values] += amount

    def values(self) -> dict[tuple[str, ...], float]:
        """Current counts by label values (Redis and this process's fallback counts)."""
        with self._lock:
            counts: dict[tuple[str, ...], float] = dict(self._local)
        try:
            client = shared_redis.client()
            stored = client.hgetall(self.redis_key) if client is not None else {}
        except Exception:
            stored = {}
        for field, value in stored.items():
            labels = tuple(field.decode().split("|"))
            if len(labels) == len(self.labelnames):
                counts[labels] = counts.get(labels, 0) + float(value)
        return counts

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for labels, value in sorted(self.values().items()):
            family.add_metric(list(labels), value)
        yield family

    def describe(self):
        yield CounterMetricFamily(self.name, self.documentation, labels=list(self.labelnames))


class _Child:
    def __init__(self, parent: SharedCounter, values: tuple[str, ...]) -> None:
        self._parent, self._values = parent, values

    def inc(self, amount: int = 1) -> None:
        self._parent.inc(self._values, amount)


REFRESH_OUTCOMES = SharedCounter(
    "dromos_refresh", REFRESH_OUTCOME_HELP, ("provider", "outcome"), redis_key="dromos:metrics:refresh_total"
)


def refresh_outcomes_collector() -> SharedCounter:
    """Listed in settings.METRICS_COLLECTORS: /metrics evaluates it at scrape time, whatever
    the worker model (it is not a multiprocess-mode Counter)."""
    return REFRESH_OUTCOMES


def refresh_outcome(provider: str, outcome: str) -> None:
    REFRESH_OUTCOMES.labels(provider=provider, outcome=outcome).inc()
