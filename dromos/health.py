"""Liveness, readiness and metrics endpoints, and the deployment checks, shared by both processes.

- `/healthz`: the process answers (no dependency is touched): restart it when this fails.
- `/readyz`: the database, Redis and (gateway) the broker answer: route traffic to it only then.
- `/metrics`: Prometheus text format. With several workers set PROMETHEUS_MULTIPROC_DIR
  (docker/serve.py and docker/gunicorn.conf.py prepare it) so every worker's samples
  are aggregated. Collectors listed in settings.METRICS_COLLECTORS (e.g. the broker's
  connections-by-status gauge) are evaluated at scrape time.

The deployment checks (`manage.py check --deploy`) live in dromos/checks.py.
"""

from __future__ import annotations

import glob
import os
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


def forget_dead_workers(directory: str) -> list[int]:
    """The live-only gauge files (`gauge_live*_<pid>.db`) of workers that are gone, removed as
    gunicorn's child_exit hook removed them; whatever server replaced the worker (granian
    respawns its workers without a hook). Their counters and histograms stay: they are summed.
    The pids forgotten."""
    gone = []
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = path.rsplit("_", 1)[-1].removesuffix(".db")
        if not pid.isdigit() or int(pid) in gone:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            gone.append(int(pid))
        except PermissionError:  # alive, another user's
            continue
    for pid in gone:
        multiprocess.mark_process_dead(pid, directory)
    return gone


def metrics(request):
    directory = env_str("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        forget_dead_workers(directory)
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
