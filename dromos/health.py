"""Liveness, readiness and metrics endpoints, and the deployment checks, shared by both processes.

- `/healthz`: the process answers (no dependency is touched): restart it when this fails.
- `/readyz`: the database, Redis and (gateway) the broker answer: route traffic to it only then.
- `/metrics`: Prometheus text format. Under gunicorn with several workers set
  PROMETHEUS_MULTIPROC_DIR (docker/gunicorn.conf.py prepares it) so every worker's samples
  are aggregated. Collectors listed in settings.METRICS_COLLECTORS (e.g. the broker's
  connections-by-status gauge) are evaluated at scrape time.

The deployment checks (`manage.py check --deploy`) live in dromos/checks.py.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from dromos import redis as shared_redis
from dromos.env import env_str
from dromos.http import no_store


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


def readiness_checks() -> dict[str, bool]:
    checks_: dict[str, bool] = {"database": _check_database()}
    redis_ok = shared_redis.ping()
    if redis_ok is not None:
        checks_["redis"] = redis_ok
    if settings.READINESS_EXTRA_CHECK:
        checks_.update(import_string(settings.READINESS_EXTRA_CHECK)())
    return checks_


def readyz(request):
    results = readiness_checks()
    ok = all(results.values())
    response = JsonResponse({"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503)
    return no_store(response)


@lru_cache(maxsize=1)
def _extra_collectors() -> tuple:
    return tuple(import_string(path)() for path in settings.METRICS_COLLECTORS)


def metrics(request):
    if env_str("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        payload = generate_latest(registry)
    else:
        payload = generate_latest(REGISTRY)
    collectors = _extra_collectors()
    if collectors:
        # Scrape-time collectors answer from this process alone, whatever the worker model.
        extra = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            extra.register(collector)
        payload += generate_latest(extra)
    return HttpResponse(payload, content_type=CONTENT_TYPE_LATEST)
