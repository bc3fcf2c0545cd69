"""Resolve a configured Provider row (plus per-connection parameters) into a ProviderSpec."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import orjson
from django.conf import settings

from broker_app import crypto
from broker_app.oauth import oidc
from broker_app.providers.hooks import HOOKS, ProviderHooks
from broker_app.providers.spec import (
    ENDPOINT_KEYS,
    ProviderConfigError,
    ProviderSpec,
    missing_params,
    param_specs,
    resolve_values,
    template,
)

_DISCOVERED = (  # spec field <- discovery document key (OpenID Connect Discovery 1.0 §3)
    ("authorize_url", "authorization_endpoint"),
    ("token_url", "token_endpoint"),
    ("revocation_url", "revocation_endpoint"),
    ("userinfo_url", "userinfo_endpoint"),
    ("jwks_uri", "jwks_uri"),
    ("device_authorization_url", "device_authorization_endpoint"),  # RFC 8628 §4
)


def client_secret(provider) -> str | None:
    return crypto.decrypt(provider.client_secret_enc, aad=crypto.client_secret_aad(provider.pk))


def set_client_secret(provider, secret: str) -> None:
    provider.client_secret_enc = crypto.encrypt(secret, aad=crypto.client_secret_aad(provider.pk))


def private_key(provider) -> str | None:
    """The provider's app private key (PEM), for GitHub App and JWT bearer connections."""
    return crypto.decrypt(provider.private_key_enc, aad=crypto.private_key_aad(provider.pk))


def set_private_key(provider, pem: str) -> None:
    """Store a private key after checking it (raises assertions.PrivateKeyError, saying why)."""
    from broker_app.oauth.assertions import normalised_pem

    provider.private_key_enc = crypto.encrypt(normalised_pem(pem), aad=crypto.private_key_aad(provider.pk))


def _check_endpoint(url: str, field: str) -> None:
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in settings.ALLOW_HTTP_PROVIDER_HOSTS):
        return
    raise ProviderConfigError(f"{field} must be an https URL")


def template_values(provider, params: dict[str, Any] | None = None) -> dict[str, str]:
    """The validated template values (operator settings, agent params, catalog defaults);
    raises ProviderConfigError on a bad, unknown, operator-only or missing parameter."""
    entry = template(provider.template)
    values = resolve_values(entry, fixed=provider.settings or {}, given=params or {})
    missing = missing_params(entry, values)
    if missing:
        specs = param_specs(entry)
        parts = []
        for name in missing:
            who = "the operator sets it with --setting" if specs[name].operator_only else "pass it in `params`"
            example = f", e.g. {specs[name].example!r}" if specs[name].example else ""
            parts.append(f"{name!r} ({who}{example})")
        noun = "parameter" if len(parts) == 1 else "parameters"
        raise ProviderConfigError(f"{provider.name} needs the {noun} {', '.join(parts)}")
    return values


def resolve(provider, params: dict[str, Any] | None = None) -> tuple[ProviderSpec, ProviderHooks]:
    """The provider's effective configuration for one connection, with its hook object.
    Raises ProviderConfigError when a parameter, an endpoint or the discovery document is bad."""
    spec = _cached(provider, params or {}, with_secret=True)
    spec = _discovered(spec, template(provider.template))
    for field in ENDPOINT_KEYS:
        _check_endpoint(getattr(spec, field), field)
    if not spec.api_base_url.startswith("{metadata."):  # a connection's metadata: checked by the proxy
        _check_endpoint(spec.api_base_url, "api_base_url")
    if not spec.authorize_url or not spec.token_url:
        raise ProviderConfigError(f"{provider.name} has no authorize/token endpoint configured")
    return spec, HOOKS[spec.hook]


def resolve_machine(provider, params: dict[str, Any] | None = None) -> tuple[ProviderSpec, ProviderHooks]:
    """The spec for a machine grant (issue 18): only the token endpoint is needed (from the
    catalog, the row or OIDC discovery)."""
    spec = _cached(provider, params or {}, with_secret=True)
    spec = _discovered(spec, template(provider.template))
    for field in ENDPOINT_KEYS:
        _check_endpoint(getattr(spec, field), field)
    if not spec.token_url:
        raise ProviderConfigError(f"{provider.name} has no token endpoint configured")
    return spec, HOOKS[spec.hook]


def resolve_static(provider, params: dict[str, Any] | None = None) -> ProviderSpec:
    """The spec of a static-credential provider (no OAuth endpoints, no client secret)."""
    spec = _cached(provider, params or {}, with_secret=False)
    for field in ENDPOINT_KEYS:
        _check_endpoint(getattr(spec, field), field)
    return spec


def described(provider) -> ProviderSpec:
    """The provider as its catalog entry and row describe it, for presenting: URLs left as
    templates, no template values, no discovery, no client secret."""
    return _cached(provider, None, with_secret=False)


def _discovered(spec: ProviderSpec, entry: dict[str, Any]) -> ProviderSpec:
    """`spec` with the endpoints, issuer and algorithms an OIDC discovery document supplies,
    when the catalog and the row leave any of them open (oidc caches the document)."""
    if not (spec.oidc and spec.discovery_url) or (
        spec.authorize_url and spec.token_url and spec.jwks_uri and spec.issuer
    ):
        return spec
    _check_endpoint(spec.discovery_url, "discovery_url")
    try:
        doc = oidc.discovery(spec.discovery_url)
    except oidc.DocumentUnavailable as exc:
        raise ProviderConfigError(str(exc)) from None
    found: dict[str, Any] = {}
    for field, key in _DISCOVERED:
        if not getattr(spec, field) and isinstance(doc.get(key), str):
            found[field] = doc[key]
    if not spec.issuer:
        found["issuer"] = str(doc.get("issuer", ""))
    advertised = doc.get("id_token_signing_alg_values_supported")
    if isinstance(advertised, list) and advertised and "id_token_algs" not in entry:
        found["id_token_algs"] = tuple(str(a) for a in advertised)
    return replace(spec, **found)


# Resolved specs per provider row version and parameters, so a callback or a refresh does
# not rebuild one (nor decrypt the client secret) each time. The row's version is every
# column of it (updated_at, the secret's ciphertext, the overrides …), so any change to the
# row (the provider command, an admin save, rotate_token_keys) is a new key, in every
# process, with no signal to miss. Per process, bounded, least recently used out first.
_CACHE_SIZE = 512
_cache: OrderedDict[tuple, ProviderSpec] = OrderedDict()
_cache_lock = threading.Lock()


def _row_version(provider) -> bytes:
    columns = [column.value_from_object(provider) for column in provider._meta.concrete_fields]
    return orjson.dumps(columns, option=orjson.OPT_SORT_KEYS)


def _cached(provider, params: dict[str, Any] | None, *, with_secret: bool) -> ProviderSpec:
    try:
        frozen_params = None if params is None else orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (a non-string key): template_values refuses it below
        frozen_params = key = None
    else:
        key = (_row_version(provider), frozen_params, with_secret)
        with _cache_lock:
            spec = _cache.get(key)
            if spec is not None:
                _cache.move_to_end(key)
                return spec
    entry = template(provider.template)
    values = None if params is None else template_values(provider, params)
    secret = client_secret(provider) if with_secret else None
    spec = ProviderSpec.from_catalog(entry, provider, values, client_secret=secret)
    if key is not None:
        with _cache_lock:
            _cache[key] = spec
            if len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return spec


def cache_clear() -> None:
    """Forget every resolved spec (tests that change the key ring under a provider row)."""
    with _cache_lock:
        _cache.clear()
