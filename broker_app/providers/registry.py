"""Resolve a configured Provider row (plus per-connection parameters) into a ProviderSpec."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings

from broker_app import crypto
from broker_app.oauth import oidc
from broker_app.providers.hooks import HOOKS, ProviderHooks
from broker_app.providers.spec import (
    ProviderConfigError,
    ProviderSpec,
    fill,
    missing_params,
    param_specs,
    resolve_values,
    template,
)

_URL_FIELDS = (
    "discovery_url",
    "authorize_url",
    "token_url",
    "revocation_url",
    "userinfo_url",
    "jwks_uri",
    "refresh_url",
    "api_base_url",
)
_ROW_URL_FIELDS = ("discovery_url", "authorize_url", "token_url", "revocation_url", "userinfo_url", "api_base_url")


def client_secret(provider) -> str | None:
    return crypto.decrypt(provider.client_secret_enc, aad=f"provider:{provider.pk}:client_secret")


def set_client_secret(provider, secret: str) -> None:
    provider.client_secret_enc = crypto.encrypt(secret, aad=f"provider:{provider.pk}:client_secret")


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
    """The provider's effective configuration for one connection, with its hook object."""
    entry = template(provider.template)
    values = template_values(provider, params)
    # `{client_id}` appears in GitHub's revocation URL; it is the operator's, never an agent's.
    url_values = {**values, "client_id": quote(provider.client_id or "", safe="")}

    urls = {}
    for field in _URL_FIELDS:
        raw = (getattr(provider, field, "") if field in _ROW_URL_FIELDS else "") or entry.get(field, "")
        urls[field] = fill(raw, url_values) if raw else ""
    issuer = fill(entry.get("issuer", ""), values, keep=("tenantid",))
    algs = tuple(entry.get("id_token_algs", ("RS256",)))
    oidc_enabled = bool(entry.get("oidc", False))

    needs_discovery = (
        oidc_enabled
        and urls["discovery_url"]
        and not (urls["authorize_url"] and urls["token_url"] and urls["jwks_uri"] and issuer)
    )
    if needs_discovery:
        _check_endpoint(urls["discovery_url"], "discovery_url")
        try:
            doc = oidc.discovery(urls["discovery_url"])
        except oidc.DocumentUnavailable as exc:
            raise ProviderConfigError(str(exc)) from None
        for field, key in (
            ("authorize_url", "authorization_endpoint"),
            ("token_url", "token_endpoint"),
            ("revocation_url", "revocation_endpoint"),
            ("userinfo_url", "userinfo_endpoint"),
            ("jwks_uri", "jwks_uri"),
        ):
            if not urls[field] and isinstance(doc.get(key), str):
                urls[field] = doc[key]
        issuer = issuer or str(doc.get("issuer", ""))
        advertised = doc.get("id_token_signing_alg_values_supported")
        if isinstance(advertised, list) and advertised and "id_token_algs" not in entry:
            algs = tuple(str(a) for a in advertised)
    for field, url in urls.items():
        _check_endpoint(url, field)
    if not urls["authorize_url"] or not urls["token_url"]:
        raise ProviderConfigError(f"{provider.name} has no authorize/token endpoint configured")

    spec = ProviderSpec(
        key=provider.template,
        name=provider.name,
        provider_id=str(provider.pk),
        display_name=provider.display_name or entry.get("display_name", provider.name),
        client_id=provider.client_id,
        client_secret=client_secret(provider),
        authorize_url=urls["authorize_url"],
        token_url=urls["token_url"],
        revocation_url=urls["revocation_url"],
        userinfo_url=urls["userinfo_url"],
        discovery_url=urls["discovery_url"],
        issuer=issuer,
        jwks_uri=urls["jwks_uri"],
        oidc=oidc_enabled,
        scope_separator=entry.get("scope_separator", " "),
        pkce=entry.get("pkce", "S256"),
        default_scopes=tuple(provider.default_scopes or entry.get("default_scopes", ())),
        authorize_params={**entry.get("authorize_params", {}), **(provider.authorize_params or {})},
        token_auth=provider.token_auth or entry.get("token_auth", "client_secret_basic"),
        token_headers=dict(entry.get("token_headers", {})),
        refresh=bool(entry.get("refresh", True)),
        refresh_token_rotation=bool(entry.get("refresh_token_rotation", False)),
        refresh_token_lifetime_days=entry.get("refresh_token_lifetime_days"),
        id_token_algs=algs,
        hook=entry.get("hook", "default"),
        settings=dict(provider.settings or {}),
        docs_url=entry.get("docs_url", ""),
        params={name: p.pattern for name, p in param_specs(entry).items()},
        values=values,
        scope_param=entry.get("scope_param", "scope"),
        token_format=entry.get("token_format", "form"),
        refresh_url=urls["refresh_url"],
        refresh_params=dict(entry.get("refresh_params", {})),
        revocation_method=entry.get("revocation_method", "POST"),
        revocation_auth=entry.get("revocation_auth", "client"),
        revocation_format=entry.get("revocation_format", "form"),
        revocation_token_param=entry.get("revocation_token_param", "token"),
        revocation_token=entry.get("revocation_token", "refresh_token"),
        revocation_hint=bool(entry.get("revocation_hint", True)),
        error_field=entry.get("error_field", "error"),
        error_aliases=dict(entry.get("error_aliases", {})),
        transient_errors=tuple(entry.get("transient_errors", ())),
        account_fields=dict(entry.get("account_fields", {})),
        metadata_fields=dict(entry.get("metadata_fields", {})),
        callback_params=tuple(entry.get("callback_params", ())),
        scope_aliases=dict(entry.get("scope_aliases", {})),
        scope_strip_prefix=entry.get("scope_strip_prefix", ""),
        api_base_url=urls["api_base_url"],
        api_hosts=tuple(fill(host, url_values) for host in entry.get("api_hosts", ())),
        api_auth=dict(entry.get("api_auth", {})),
    )
    return spec, HOOKS[spec.hook]
