"""System checks and start-up guards of the broker (the shared ones: dromos/checks.py).

- A missing or malformed key ring is fatal at import (settings) or app ready: the broker
  never serves with keys it cannot use.
- A well-formed but *wrong* key ring (the data was encrypted under keys that are no longer
  configured) is caught by `manage.py check --database default` and, before the first
  request, by `assert_keys_match_data()` which `dromos/wsgi.py` runs when gunicorn loads
  the broker.
- A malformed BROKER_ALLOWED_CIDRS is a critical error, not a 500 at the first request.
- Deployment checks (tag "dromos", run by `manage.py check --deploy` or `manage.py check
  --tag dromos`): the development key, and every enabled provider's client secret and
  endpoints. They read the database and may call providers' discovery URLs, so they never
  run on plain `check`, `migrate` or tests.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from broker_app import crypto
from dromos.checks import CHECK_TAG
from dromos.env import DEV_SECRETS

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


# -- deployment checks (tag "dromos"; only with --deploy or --tag dromos) --------------------------


def check_token_keys(app_configs, **kwargs):
    raw = [item.strip() for item in settings.TOKEN_ENCRYPTION_KEYS.split(",") if item.strip()]
    if DEV_SECRETS["TOKEN_ENCRYPTION_KEYS"] in raw:
        return [
            checks.Error(
                "TOKEN_ENCRYPTION_KEYS holds the development key",
                hint="generate one with python -c "
                "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'",
                id="dromos.E111",
            )
        ]
    return []


def _host_resolves(url: str) -> bool:
    host = urlsplit(url).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def provider_problems(provider) -> list[str]:
    """What keeps one provider from working, in words an operator can act on."""
    from broker_app.providers.registry import client_secret, resolve
    from broker_app.providers.spec import ProviderConfigError, catalog, param_specs

    problems = []
    if not provider.client_id:
        problems.append("no client id (provider upsert --client-id)")
    try:
        if not client_secret(provider) and catalog().get(provider.template, {}).get("token_auth") != "none":
            problems.append("no client secret (provider upsert --client-secret)")
    except crypto.DecryptionError:
        # Nothing else can be checked without the secret (resolving needs it).
        return [*problems, "client secret does not decrypt with TOKEN_ENCRYPTION_KEYS"]
    entry = catalog().get(provider.template)
    if entry is None:
        return [*problems, f"unknown catalog template {provider.template!r}"]
    unset = [
        name
        for name, param in param_specs(entry).items()
        if param.default is None and name not in (provider.settings or {})
    ]
    if unset:
        return problems  # endpoints depend on per-connection parameters (e.g. a tenant)
    try:
        spec, _hooks = resolve(provider)
    except ProviderConfigError as exc:
        return [*problems, f"endpoints do not resolve: {exc}"]
    for name in ("authorize_url", "token_url"):
        url = getattr(spec, name, "")
        if url and not _host_resolves(url):
            problems.append(f"{name} host {urlsplit(url).hostname} does not resolve")
    return problems


def check_providers(app_configs, **kwargs):
    from broker_app.models import Provider

    try:
        providers = list(Provider.objects.filter(enabled=True))
    except DatabaseError as exc:
        return [
            checks.Error(f"cannot read providers: {type(exc).__name__}", hint="run manage.py migrate", id="dromos.E112")
        ]
    if not providers:
        return [
            checks.Warning("no provider is configured", hint="manage.py provider upsert --name …", id="dromos.W111")
        ]
    return [
        checks.Error(f"provider {provider.name}: {problem}", id="dromos.E113")
        for provider in providers
        for problem in provider_problems(provider)
    ]


def register() -> None:
    """Register the broker's checks (from BrokerAppConfig.ready)."""
    checks.register(check_encryption_keys, checks.Tags.security)
    checks.register(check_provider_secrets, checks.Tags.database)
    checks.register(check_keys_match_data, checks.Tags.database)
    checks.register(check_allowed_cidrs, checks.Tags.security)
    checks.register(check_return_url_policy, checks.Tags.security)
    checks.register(check_token_keys, CHECK_TAG, deploy=True)
    checks.register(check_providers, CHECK_TAG, deploy=True)
