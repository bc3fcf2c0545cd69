"""Deployment checks shared by both processes (tag "dromos"; they run only with
`manage.py check --deploy` or `manage.py check --tag dromos`, never on plain `check`,
`migrate` or tests): development secrets and DEBUG, and whether the database, Redis and
(gateway) the broker answer now. The broker adds its own in broker_app/checks.py."""

from __future__ import annotations

from django.conf import settings
from django.core import checks

from dromos.health import readiness_checks

CHECK_TAG = "dromos"


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
        target = settings.BROKER_INTERNAL_URL if name == "broker" else None
        where = f" at {target}/healthz" if target else ""
        problems.append(
            checks.Error(f"{text}{where}", hint=f"check {variable}" if variable else None, id="dromos.E102")
        )
    return problems


def register_checks() -> None:
    checks.register(check_secrets, CHECK_TAG, deploy=True)
    checks.register(check_services, CHECK_TAG, deploy=True)
