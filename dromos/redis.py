"""The one Redis client of a process (REDIS_URL; None without it)."""

from __future__ import annotations

from functools import cache

from django.conf import settings


@cache
def _client(url: str, timeout: float):
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_client():
    if not settings.REDIS_URL:
        return None
    return _client(settings.REDIS_URL, settings.REDIS_TIMEOUT_SECONDS)
