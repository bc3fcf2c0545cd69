"""Scrape-time Prometheus collectors of the broker (settings.METRICS_COLLECTORS).

`dromos_connections{provider,status}` counts connections at scrape time. The count is a
GROUP BY over the connections table, so it is cached for METRICS_CONNECTIONS_CACHE_SECONDS
(shared through the Django cache): however many scrapers and workers ask, the database
sees at most one count per interval."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily
from redis import RedisError

logger = logging.getLogger(__name__)
CACHE_KEY = "dromos:metrics:connections-by-status"


def connection_counts() -> list[tuple[str, str, int]]:
    from broker_app.models import Connection

    rows = Connection.objects.order_by().values_list("provider__name", "status").annotate(count=Count("id"))
    return [(provider, status, count) for provider, status, count in rows]


def _cache_call(method, *args):
    """The count is only cached to spare the database: without Redis, count every scrape."""
    try:
        return method(*args)
    except RedisError:
        return None


class ConnectionStatusCollector:
    def describe(self):
        # Nothing at registration: describing must not query the database.
        return []

    def collect(self):
        ttl = settings.METRICS_CONNECTIONS_CACHE_SECONDS
        counts = _cache_call(cache.get, CACHE_KEY) if ttl else None
        if counts is None:
            try:
                counts = connection_counts()
            except DatabaseError:
                logger.warning("connection counts unavailable for /metrics")
                return
            if ttl:
                _cache_call(cache.set, CACHE_KEY, counts, ttl)
        family = GaugeMetricFamily(
            "dromos_connections",
            "Connections by provider and status (counted at scrape time, cached for METRICS_CONNECTIONS_CACHE_SECONDS)",
            labels=["provider", "status"],
        )
        for provider, status, count in counts:
            family.add_metric([provider, status], count)
        yield family
