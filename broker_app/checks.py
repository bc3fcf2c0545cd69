"""System checks and start-up guards of the broker.

- A missing or malformed key ring is fatal at import (settings) or app ready: the broker
  never serves with keys it cannot use.
- A well-formed but *wrong* key ring (the data was encrypted under keys that are no longer
  configured) is caught by `manage.py check --database default` and, before the first
  request, by `assert_keys_match_data()` which `dromos/wsgi.py` runs when gunicorn loads
  the broker.
- A malformed BROKER_ALLOWED_CIDRS is a critical error, not a 500 at the first request.
"""

from __future__ import annotations

import ipaddress
import logging

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from broker_app import crypto

logger = logging.getLogger(__name__)

TOKEN_FIELDS = ("access_token_enc", "refresh_token_enc", "id_token_enc", "pkce_verifier_enc")
# How many recently refreshed connections the start-up guard samples: enough to notice a
# wrong key ring at once, cheap on a table of millions (it reads the expiry index).
SAMPLE_SIZE = 20


def assert_keys_usable() -> None:
    ring = crypto.KeyRing(crypto.parse_keys(settings.TOKEN_ENCRYPTION_KEYS))
    probe = ring.encrypt("probe", aad="startup")
    if ring.decrypt(probe, aad="startup") != "probe":  # pragma: no cover - AES-GCM round trip
        raise ImproperlyConfigured("TOKEN_ENCRYPTION_KEYS failed a round trip")


def check_encryption_keys(app_configs, **kwargs):
    try:
        assert_keys_usable()
    except ImproperlyConfigured as exc:
        return [checks.Critical(str(exc), id="dromos.E001")]
    return []


def check_allowed_cidrs(app_configs, **kwargs):
    problems = []
    for entry in settings.BROKER_ALLOWED_CIDRS:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(
                checks.Critical(f"BROKER_ALLOWED_CIDRS entry {entry!r} is not an IP network", id="dromos.E003")
            )
    return problems


def check_return_url_policy(app_configs, **kwargs):
    if settings.ENFORCE_RETURN_URL and not settings.ALLOWED_RETURN_DOMAINS:
        return [
            checks.Warning(
                "ENFORCE_RETURN_URL is on and ALLOWED_RETURN_DOMAINS is empty: every "
                "request-connection will be refused",
                id="dromos.W001",
            )
        ]
    return []


def unknown_key_problems() -> list[str]:
    """Rows (every provider, a sample of recent connections) whose ciphertext names a key
    that TOKEN_ENCRYPTION_KEYS does not hold. Raises DatabaseError when the tables are not
    reachable (not migrated yet, database down)."""
    from broker_app.models import Connection, Provider

    known = set(crypto.keyring().key_ids)
    problems = []
    for name, secret in Provider.objects.exclude(client_secret_enc="").values_list("name", "client_secret_enc"):
        if crypto.KeyRing.key_of(secret) not in known:
            problems.append(f"provider {name}: client secret is encrypted under a key that is not configured")
    recent = (
        Connection.objects.filter(status=Connection.Status.ACTIVE, expires_at__isnull=False)
        .order_by("-expires_at")
        .values_list("id", *TOKEN_FIELDS)[:SAMPLE_SIZE]
    )
    for connection_id, *values in recent:
        if any(value and crypto.KeyRing.key_of(value) not in known for value in values):
            problems.append(f"connection {connection_id}: tokens are encrypted under a key that is not configured")
    return problems


def assert_keys_match_data() -> None:
    """Refuse to start when the configured keys cannot read the stored data. A database
    that cannot be reached is not our verdict to give: readiness reports it."""
    try:
        problems = unknown_key_problems()
    except DatabaseError:
        logger.warning("key ring not checked against stored data: database not reachable or not migrated")
        return
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ImproperlyConfigured(
            "TOKEN_ENCRYPTION_KEYS cannot decrypt stored data (wrong key, or a retired key was removed before "
            f"rotate_token_keys finished): {problems[0]}{more}"
        )


def check_keys_match_data(app_configs, databases=None, **kwargs):
    if not databases:
        return []
    try:
        problems = unknown_key_problems()
    except DatabaseError:
        return []
    return [
        checks.Critical(
            problem + " (wrong TOKEN_ENCRYPTION_KEYS, or a retired key was removed before rotate_token_keys finished)",
            id="dromos.E004",
        )
        for problem in problems
    ]


def check_provider_secrets(app_configs, databases=None, **kwargs):
    """Every provider's client secret must decrypt with the configured keys."""
    if not databases:
        return []
    from broker_app.models import Provider
    from broker_app.providers.registry import client_secret

    problems = []
    try:
        providers = list(Provider.objects.all())
    except DatabaseError:
        return []
    for provider in providers:
        try:
            client_secret(provider)
        except crypto.DecryptionError:
            problems.append(
                checks.Error(
                    f"provider {provider.name}: client secret does not decrypt with TOKEN_ENCRYPTION_KEYS "
                    "(wrong key, or a retired key was removed before rotate_token_keys ran)",
                    id="dromos.E002",
                )
            )
    return problems
