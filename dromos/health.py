"""Liveness, readiness and metrics endpoints, and the deployment checks, shared by both processes.

- `/healthz`: the process answers (no dependency is touched): restart it when this fails.
- `/readyz`: the database, Redis and (gateway) the broker answer: route traffic to it only then.
- `/metrics`: Prometheus text format. Under gunicorn with several workers set
  PROMETHEUS_MULTIPROC_DIR (docker/gunicorn.conf.py prepares it) so every worker's samples
  are aggregated. Collectors listed in settings.METRICS_COLLECTORS (e.g. the broker's
  connections-by-status gauge) are evaluated at scrape time.
- `manage.py check --deploy` (or `check --tag dromos`) runs the checks tagged "dromos":
  secrets, and whether the database, Redis and the broker answer.
"""

from __future__ import annotations

import os
from functools import lru_cache

from django.conf import settings
from django.core import checks
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

CHECK_TAG = "dromos"


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


def _check_redis() -> bool | None:
    if not settings.REDIS_URL:
        return None
    try:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        return bool(client.ping())
    except Exception:
        return False


def readiness_checks() -> dict[str, bool]:
    checks_: dict[str, bool] = {"database": _check_database()}
    redis_ok = _check_redis()
    if redis_ok is not None:
        checks_["redis"] = redis_ok
    extra = getattr(settings, "READINESS_EXTRA_CHECK", None)
    if extra:
        checks_.update(import_string(extra)())
    return checks_


def readyz(request):
    results = readiness_checks()
    ok = all(results.values())
    response = JsonResponse({"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503)
    response["Cache-Control"] = "no-store"
    return response


@lru_cache(maxsize=1)
def _extra_collectors() -> tuple:
    return tuple(import_string(path)() for path in getattr(settings, "METRICS_COLLECTORS", ()))


def metrics(request):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
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


# -- deployment checks (tag "dromos"; only with --deploy or --tag dromos) --------------------------


def check_secrets(app_configs, **kwargs):
    """Development defaults, short secrets and DEBUG have no place in a deployment."""
    problems = []
    for name, value in (("DJANGO_SECRET_KEY", settings.SECRET_KEY), ("BROKER_API_KEY", settings.BROKER_API_KEY)):
        if value.startswith("dev-only"):
            problems.append(
                checks.Error(
                    f"{name} is the development default",
                    hint="set a random value of at "
                    "least 32 characters (python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')",
                    id="dromos.E101",
                )
            )
        elif len(value) < 32:
            problems.append(
                checks.Warning(
                    f"{name} is only {len(value)} characters long",
                    hint="use at least 32 random characters",
                    id="dromos.W101",
                )
            )
    if settings.DEBUG:
        problems.append(
            checks.Warning(
                "DEBUG is on: development secrets are accepted and errors show detail",
                hint="set DEBUG=false",
                id="dromos.W102",
            )
        )
    return problems


_UNREACHABLE_HINTS = {
    "database": ("DATABASE_URL", "the database does not answer"),
    "redis": ("REDIS_URL", "Redis does not answer"),
    "broker": ("BROKER_INTERNAL_URL", "the broker's /healthz does not answer 200"),
}


def check_services(app_configs, **kwargs):
    """The services this process needs answer now (as /readyz sees them)."""
    problems = []
    for name, ok in readiness_checks().items():
        if ok:
            continue
        variable, text = _UNREACHABLE_HINTS.get(name, (None, f"{name} is not ready"))
        target = getattr(settings, variable, None) if variable == "BROKER_INTERNAL_URL" else None
        where = f" at {target}/healthz" if target else ""
        problems.append(
            checks.Error(f"{text}{where}", hint=f"check {variable}" if variable else None, id="dromos.E102")
        )
    return problems


def register_checks() -> None:
    checks.register(check_secrets, CHECK_TAG, deploy=True)
    checks.register(check_services, CHECK_TAG, deploy=True)
