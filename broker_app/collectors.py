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


GRANT_CACHE_KEY = "dromos:metrics:grant-ends"
GRANT_BUCKETS_DAYS = (1, 7, 14, 30, 90)


def grant_end_counts() -> list[tuple[str, str, int]]:
    """(provider, within_days, count) of active connections whose refresh token ends within
    that many days (cumulative; "+Inf": every one with a known end)."""
    from datetime import timedelta

    from django.db.models import Q
    from django.utils import timezone

    from broker_app.models import Connection

    now = timezone.now()
    buckets = {
        str(days): Count("id", filter=Q(refresh_expires_at__lte=now + timedelta(days=days)))
        for days in GRANT_BUCKETS_DAYS
    }
    rows = (
        Connection.objects.filter(status=Connection.Status.ACTIVE, refresh_expires_at__isnull=False)
        .order_by()
        .values("provider__name")
        .annotate(total=Count("id"), **{f"d{k}": v for k, v in buckets.items()})
    )
    counts = []
    for row in rows:
        for days in GRANT_BUCKETS_DAYS:
            counts.append((row["provider__name"], str(days), row[f"d{days}"]))
        counts.append((row["provider__name"], "+Inf", row["total"]))
    return counts


class GrantEndCollector:
    """`dromos_connections_grant_ending{provider,within_days}`: active connections by days
    until their refresh token's absolute end (cached like dromos_connections)."""

    def describe(self):
        return []

    def collect(self):
        ttl = settings.METRICS_CONNECTIONS_CACHE_SECONDS
        counts = _cache_call(cache.get, GRANT_CACHE_KEY) if ttl else None
        if counts is None:
            try:
                counts = grant_end_counts()
            except DatabaseError:
                logger.warning("grant end counts unavailable for /metrics")
                return
            if ttl:
                _cache_call(cache.set, GRANT_CACHE_KEY, counts, ttl)
        family = GaugeMetricFamily(
            "dromos_connections_grant_ending",
            "Active connections whose refresh token ends within `within_days` days (cumulative; +Inf: any known end)",
            labels=["provider", "within_days"],
        )
        for provider, within, count in counts:
            family.add_metric([provider, within], count)
        yield family
