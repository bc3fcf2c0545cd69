"""The one place that reads the process environment.

Settings modules call these helpers; nothing else in the code base reads os.environ.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def _env_number(name: str, default, kind: type, what: str):
    value = env_str(name)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}") from None


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "an integer")


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    value = env_str(name)
    if value is None:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


def env_default(name: str, value: str) -> None:
    """Set a variable for this process (and the processes it starts) unless it is set:
    the test settings' defaults, the Celery app's settings module."""
    os.environ.setdefault(name, value)


# What stands in for each secret in DEBUG (so `make run` needs no set-up); the deployment
# checks (dromos.checks, broker_app.checks) refuse every one of them.
DEV_SECRETS = {
    "DJANGO_SECRET_KEY": "dev-only-insecure-secret-key-do-not-deploy",
    "BROKER_API_KEY": "dev-only-broker-api-key",
    # A Fernet-format key: base64 of "dev-only-insecure-key-0000000000".
    "TOKEN_ENCRYPTION_KEYS": "ZGV2LW9ubHktaW5zZWN1cmUta2V5LTAwMDAwMDAwMDA=",
}


def require_secret(name: str, *, debug: bool) -> str:
    """Return a secret from the environment. Outside DEBUG a missing secret is fatal;
    in DEBUG its clearly-labelled development value (DEV_SECRETS) stands in for it."""
    value = env_str(name)
    if value:
        return value
    if debug:
        return DEV_SECRETS[name]
    raise ImproperlyConfigured(f"{name} is required when DEBUG is off")
