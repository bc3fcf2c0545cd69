"""The broker's deployment checks (tag "dromos", run by `manage.py check --deploy` or
`manage.py check --tag dromos`): encryption keys and every enabled provider's client
secret and endpoints. They read the database and may call providers' discovery URLs,
so they never run on plain `check`, `migrate` or tests."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.db import DatabaseError

from broker_app import crypto

DEV_KEY = "ZGV2LW9ubHktaW5zZWN1cmUta2V5LTAwMDAwMDAwMDA="


def check_token_keys(app_configs, **kwargs):
    raw = [item.strip() for item in settings.TOKEN_ENCRYPTION_KEYS.split(",") if item.strip()]
    if DEV_KEY in raw:
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
    from broker_app.providers.spec import ProviderConfigError, catalog

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
    if set(entry.get("params", {})) - set(provider.settings or {}):
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
    checks.register(check_token_keys, "dromos", deploy=True)
    checks.register(check_providers, "dromos", deploy=True)
