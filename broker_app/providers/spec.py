"""A resolved provider: catalog template + configured row + per-connection parameters."""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

CATALOG_PATH = Path(__file__).with_name("catalog.toml")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
MAX_PARAM_LENGTH = 253  # a DNS name's limit; every template value is a host or a path segment


class ProviderConfigError(Exception):
    """The provider cannot be used as configured (missing endpoint, bad parameter …)."""


@lru_cache(maxsize=1)
def builtin_catalog() -> dict[str, dict[str, Any]]:
    with CATALOG_PATH.open("rb") as handle:
        return tomllib.load(handle)


def catalog() -> dict[str, dict[str, Any]]:
    """The built-in templates plus those imported with `manage.py provider import`."""
    extra = extra_catalog()
    return {**extra, **builtin_catalog()} if extra else builtin_catalog()


# -- issue 22: templates imported by the operator (broker_app/providers/catalog_io.py) ------
def extra_catalog_path() -> Path | None:
    from django.conf import settings

    configured = settings.PROVIDER_CATALOG_EXTRA
    return Path(configured) if configured else None


def extra_catalog() -> dict[str, dict[str, Any]]:
    """Imported templates, re-read when the file changes (an import in another process is
    seen without a restart). A built-in key always wins; an unreadable file is logged."""
    path = extra_catalog_path()
    if path is None:
        return {}
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    # An import replaces the file (a new inode), so a change is seen even within one tick.
    return _load_extra(str(path), (stat.st_ino, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _load_extra(path: str, _stamp: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        logging.getLogger(__name__).error("imported provider catalog unreadable: %s", type(exc).__name__)
        return {}
    builtin = builtin_catalog()
    return {key: entry for key, entry in data.items() if isinstance(entry, dict) and key not in builtin}


def entry_problems(key: str, entry: dict[str, Any]) -> list[str]:
    """What is wrong with one catalog table (empty when nothing): unknown keys, endpoints
    that are not https, placeholders without a parameter, parameter patterns that are not
    anchored or reject their own example. tests/providers runs it over the whole catalog."""
    from broker_app.providers.hooks import HOOKS

    problems = [f"{key}: unknown key {name!r}" for name in sorted(set(entry) - CATALOG_KEYS)]
    if not entry.get("display_name"):
        problems.append(f"{key}: display_name is missing")
    mode = entry.get("auth_mode", "oauth2")
    static = mode in ("api_key", "basic")
    problems += _grant_problems(key, entry)
    if static:
        problems += _static_problems(key, entry)
    elif mode == "app":
        if not entry.get("token_url"):
            problems.append(f"{key}: an app template needs token_url")
    elif not entry.get("discovery_url") and not (entry.get("authorize_url") and entry.get("token_url")):
        if key != "oidc":  # the generic template gets its discovery URL from the operator
            problems.append(f"{key}: needs discovery_url or authorize_url + token_url")
    for name, allowed in _CHOICES.items():
        if name in entry and entry[name] not in allowed:
            problems.append(f"{key}: {name} must be one of {', '.join(allowed)}")
    if entry.get("hook", "default") not in HOOKS:
        problems.append(f"{key}: hook {entry['hook']!r} is not in hooks.HOOKS")
    for days_key in ("refresh_token_lifetime_days", "refresh_token_idle_days"):
        lifetime = entry.get(days_key)
        if lifetime is not None and (not isinstance(lifetime, int) or lifetime <= 0):
            problems.append(f"{key}: {days_key} must be a positive integer")
    if entry.get("oidc") and not entry.get("discovery_url") and not (entry.get("issuer") and entry.get("jwks_uri")):
        if key != "oidc":
            problems.append(f"{key}: an OIDC template needs discovery_url, or issuer + jwks_uri")
    specs = param_specs(entry)
    used: set[str] = set()
    for name in URL_KEYS:
        url = entry.get(name, "")
        if not url:
            continue
        if not url.startswith("https://"):
            problems.append(f"{key}: {name} is not an https URL")
        for placeholder in _PLACEHOLDER.findall(url):
            used.add(placeholder)
            if placeholder not in specs and placeholder not in _BUILTIN_PLACEHOLDERS.get(name, set()):
                problems.append(f"{key}: {name} uses {{{placeholder}}} but no params.{placeholder} is declared")
    for name, spec in specs.items():
        if name not in used and name not in QUIRK_PARAMS:
            problems.append(f"{key}: params.{name} appears in no URL")
        if not (spec.pattern.startswith("^") and spec.pattern.endswith("$")):
            problems.append(f"{key}: params.{name} pattern must be anchored with ^…$")
        try:
            compiled = re.compile(spec.pattern)
        except re.error:
            problems.append(f"{key}: params.{name} pattern does not compile")
            continue
        for label, value in (("example", spec.example), ("default", spec.default)):
            if value and not compiled.fullmatch(value):
                problems.append(f"{key}: params.{name} {label} {value!r} does not match its pattern")
        if not spec.example and spec.default is None:
            problems.append(f"{key}: params.{name} needs an example (agents see it)")
    problems += _proxy_and_account_problems(key, entry, specs)
    return problems


# -- issue 22: api_base_url / api_hosts (the proxy), account_id_field (reconnect),
# offline_access (how a refresh token is obtained) ---------------------------------------
ACCOUNT_ID_SOURCES = ("id_token", "token", "userinfo", "callback", "param")
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")
_METADATA_BASE = re.compile(r"^\{metadata\.[A-Za-z_][A-Za-z0-9_]*\}(/[A-Za-z0-9._~/-]*)?$")
_OFFLINE_RULES = ("always", "app_setting", "none")


def _proxy_and_account_problems(key: str, entry: dict[str, Any], specs: dict[str, ParamSpec]) -> list[str]:
    problems = []
    base = entry.get("api_base_url")
    if base is None:  # "" says so explicitly: the operator's own API (a generic OIDC template)
        problems.append(f'{key}: api_base_url is missing (the proxy\'s upstream; "" when the operator sets it)')
    elif base and not _METADATA_BASE.match(base):
        if not base.startswith("https://") or base.endswith("/"):
            problems.append(f"{key}: api_base_url must be an https URL without a trailing slash")
        for placeholder in _PLACEHOLDER.findall(base):
            if placeholder not in specs:
                problems.append(f"{key}: api_base_url uses {{{placeholder}}} but no params.{placeholder} is declared")
    elif base and not entry.get("api_hosts"):
        problems.append(f"{key}: an api_base_url taken from metadata needs api_hosts to pin its host")
    hosts = entry.get("api_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and _HOST_PATTERN.match(h) for h in hosts):
        problems.append(f"{key}: api_hosts must be a list of host names (a leading '*.' allows subdomains)")
    auth = entry.get("api_auth", {})
    if not isinstance(auth, dict) or set(auth) - {"header", "format"} or "{token}" not in auth.get("format", "{token}"):
        problems.append(f'{key}: api_auth must be {{header = "NAME", format = "... {{token}} ..."}}')
    field_path = entry.get("account_id_field")
    if field_path is None:
        problems.append(f'{key}: account_id_field is missing ("" when the provider documents no stable id)')
    elif field_path:
        source, _, path = field_path.partition(".")
        if source not in ACCOUNT_ID_SOURCES or not path:
            problems.append(f"{key}: account_id_field must be id_token., token., userinfo., callback. or param.NAME")
        elif source == "id_token" and not entry.get("oidc"):
            problems.append(f"{key}: account_id_field reads the id_token, but the template is not OIDC")
        elif source == "userinfo" and not entry.get("userinfo_url"):
            problems.append(f"{key}: account_id_field reads userinfo, but there is no userinfo_url")
        elif source == "callback" and path not in entry.get("callback_params", []):
            problems.append(f"{key}: account_id_field reads callback.{path}, which callback_params lacks")
        elif source == "param" and path not in specs:
            problems.append(f"{key}: account_id_field reads param.{path}, which params lacks")
    rule = entry.get("offline_access")
    if rule is None:
        problems.append(f"{key}: offline_access is missing (how a refresh token is obtained)")
    elif rule.startswith("scope:"):
        if rule[6:] not in entry.get("default_scopes", []):
            problems.append(f"{key}: offline_access names scope {rule[6:]!r}, which default_scopes lacks")
    elif rule.startswith("param:"):
        name, _, value = rule[6:].partition("=")
        if entry.get("authorize_params", {}).get(name) != value:
            problems.append(f"{key}: offline_access names {rule[6:]!r}, which authorize_params lacks")
    elif rule not in _OFFLINE_RULES:
        problems.append(f"{key}: offline_access must be scope:NAME, param:NAME=VALUE, always, app_setting or none")
    elif (rule == "none") == bool(entry.get("refresh", True)):
        problems.append(f"{key}: offline_access = 'none' exactly when refresh = false")
    return problems


MACHINE_GRANTS = ("client_credentials", "jwt_bearer", "github_app")
GRANT_FIELDS = ("audience", "resource")


def _grant_problems(key: str, entry: dict[str, Any]) -> list[str]:
    problems = []
    grants = entry.get("grants", [])
    if not isinstance(grants, list) or set(grants) - set(MACHINE_GRANTS):
        problems.append(f"{key}: grants must be a list of {', '.join(MACHINE_GRANTS)}")
    if set(entry.get("grant_requires", [])) - set(GRANT_FIELDS):
        problems.append(f"{key}: grant_requires may name {', '.join(GRANT_FIELDS)}")
    if entry.get("auth_mode") == "app":
        if not grants:
            problems.append(f"{key}: an app template lists its grants")
        if entry.get("refresh", True) or entry.get("offline_access") != "none":
            problems.append(f"{key}: an app template states refresh = false and offline_access = 'none'")
    return problems


def _static_problems(key: str, entry: dict[str, Any]) -> list[str]:
    problems = []
    if entry.get("refresh", True) or entry.get("offline_access") != "none":
        problems.append(f"{key}: a static-credential template states refresh = false and offline_access = 'none'")
    if entry.get("auth_mode") == "api_key" and not entry.get("credential_query_param"):
        if "{api_key}" not in entry.get("credential_format", "Bearer {api_key}"):
            problems.append(f"{key}: credential_format must contain {{api_key}}")
    if not entry.get("docs_url"):
        problems.append(f"{key}: a static-credential template needs docs_url (where the user gets the key)")
    return problems


def catalog_problems() -> list[str]:
    """Lint of the built-in catalog (imported templates are checked when imported)."""
    return [problem for key, entry in builtin_catalog().items() for problem in entry_problems(key, entry)]


def template(key: str) -> dict[str, Any]:
    try:
        return catalog()[key]
    except KeyError:
        raise ProviderConfigError(f"unknown provider template {key!r}") from None


# Template values that set a quirk instead of filling a URL (generic OIDC providers differ).
QUIRK_PARAMS = frozenset({"refresh_token_rotation", "refresh_token_reuse_grace_seconds"})


@dataclass(frozen=True)
class ParamSpec:
    """One template value (`{tenant}`, `{shop}` …) as the catalog declares it."""

    name: str
    pattern: str
    example: str = ""
    # Operator-only values (an arbitrary host) come from provider.settings, never from an agent.
    operator_only: bool = False
    default: str | None = None


def param_specs(entry: dict[str, Any]) -> dict[str, ParamSpec]:
    specs: dict[str, ParamSpec] = {}
    for name, raw in entry.get("params", {}).items():
        if isinstance(raw, str):
            specs[name] = ParamSpec(name=name, pattern=raw)
        else:
            specs[name] = ParamSpec(
                name=name,
                pattern=raw["pattern"],
                example=raw.get("example", ""),
                operator_only=bool(raw.get("operator_only", False)),
                default=raw.get("default"),
            )
    return specs


# Field metadata of ProviderSpec. Every field is a catalog key of the same name unless it
# is marked ROW; a field's default is the value when the catalog table omits the key.
ROW = {"source": "row"}  # from the provider row or the connection, never from the catalog
URL = {"url": True}  # a template URL: its {placeholders} are filled with the connection's values
ENDPOINT = {**URL, "endpoint": True}  # a URL the broker calls: must be https (registry checks it)
OVERRIDE = {"row_override": True}  # a non-empty column of the same name on the row wins


def choices(*allowed: str) -> dict[str, tuple[str, ...]]:
    """Metadata of a field that takes one of `allowed` (entry_problems checks the catalog)."""
    return {"choices": allowed}


@dataclass(frozen=True)
class ProviderSpec:
    """One provider as one connection uses it: its catalog entry with the row's credentials
    and overrides and the connection's template values. Built by `from_catalog` only; a
    provider quirk is one field here (the catalog key of its name) and the code that uses it."""

    key: str = field(metadata=ROW)  # the catalog template
    name: str = field(metadata=ROW)
    provider_id: str = field(metadata=ROW)
    client_id: str = field(metadata=ROW)
    client_secret: str | None = field(repr=False, metadata=ROW)
    settings: dict[str, Any] = field(default_factory=dict, metadata=ROW)  # fixed values, hook settings
    values: dict[str, str] = field(default_factory=dict, metadata=ROW)  # the resolved template values
    # -- the catalog keys (catalog.toml): all optional except display_name and either
    # discovery_url or authorize_url + token_url ------------------------------------------
    display_name: str = field(default="", metadata=OVERRIDE)
    docs_url: str = ""
    scopes_url: str = ""  # where the provider lists its scopes (GET /v1/providers)
    setup_url: str = ""  # where the OAuth app is registered (docs/providers.md)
    hook: str = "default"  # key in hooks.HOOKS, only where data cannot express the quirk
    # params.NAME = { pattern = '^…$', example = "…", operator_only = false, default = "…" }:
    # template values ({tenant}, {shop} …), see ParamSpec. Agents pass them in
    # request-connection `params` unless operator_only; `manage.py provider upsert --setting
    # NAME=VALUE` fixes one for the whole provider. Patterns pin every value to the
    # provider's own domains.
    params: dict[str, ParamSpec] = field(default_factory=dict)
    # endpoints ({placeholders} filled per connection)
    discovery_url: str = field(default="", metadata={**ENDPOINT, **OVERRIDE})
    authorize_url: str = field(default="", metadata={**ENDPOINT, **OVERRIDE})
    token_url: str = field(default="", metadata={**ENDPOINT, **OVERRIDE})
    revocation_url: str = field(default="", metadata={**ENDPOINT, **OVERRIDE})
    userinfo_url: str = field(default="", metadata={**ENDPOINT, **OVERRIDE})
    jwks_uri: str = field(default="", metadata=ENDPOINT)
    # RFC 8628 device authorization endpoint: set, the provider offers `"flow": "device"`
    # (generic OIDC takes discovery's device_authorization_endpoint)
    device_authorization_url: str = field(default="", metadata=ENDPOINT)
    refresh_url: str = field(default="", metadata=ENDPOINT)  # a refresh endpoint of its own (Figma)
    issuer: str = field(default="", metadata={**URL, "keep": ("tenantid",)})  # Entra's {tenantid}: per token
    # protocol
    oidc: bool = False  # verify id_tokens (issuer + jwks_uri, or discovery)
    id_token_algs: tuple[str, ...] = ("RS256",)  # accepted id_token algorithms when discovery lists none
    scope_separator: str = " "
    scope_param: str = "scope"  # Slack user tokens: "user_scope"
    pkce: str = field(default="S256", metadata=choices("S256", "required", "none"))  # none: not documented
    default_scopes: tuple[str, ...] = field(default=(), metadata=OVERRIDE)
    authorize_params: dict[str, str] = field(default_factory=dict)  # on every authorize URL; the row's win
    token_auth: str = field(
        default="client_secret_basic", metadata={**OVERRIDE, **choices("client_secret_basic", "client_secret_post")}
    )
    token_format: str = field(default="form", metadata=choices("form", "json"))  # Notion: json
    token_headers: dict[str, str] = field(default_factory=dict)  # sent to token and revocation endpoints
    refresh: bool = True  # the provider issues refresh tokens
    refresh_token_rotation: bool = False
    # How long the provider still accepts a rotated-out refresh token (Okta's grace period,
    # Auth0's reuse interval): after an interrupted refresh, retrying inside it is safe.
    refresh_token_reuse_grace_seconds: int = 0
    # A refresh token's documented lifetime, used when the token response does not state
    # one (drives refresh_token_expires_at and its warning).
    refresh_token_lifetime_days: int | None = None
    # How long the provider keeps an unused refresh token (Microsoft 90 days of inactivity,
    # Google 6 months unused): the sweep's keep-alive refreshes come often enough for it.
    refresh_token_idle_days: int | None = None
    refresh_params: dict[str, str] = field(default_factory=dict)  # extra form fields on a refresh
    # revocation (RFC 7009 and its variants)
    revocation_method: str = field(default="POST", metadata=choices("POST", "DELETE"))  # GitHub: DELETE
    # "client" = as token_auth, "basic", "post", "bearer" = the token itself, "none"
    revocation_auth: str = field(default="client", metadata=choices("client", "basic", "post", "bearer", "none"))
    revocation_format: str = field(default="form", metadata=choices("form", "json", "none"))  # none: no body
    revocation_token_param: str = "token"
    # which stored token revokes the grant
    revocation_token: str = field(default="refresh_token", metadata=choices("refresh_token", "access_token"))
    revocation_hint: bool = True  # send token_type_hint with form/json bodies
    # errors and token responses
    error_field: str = "error"  # HubSpot names its error in `status`
    # provider code -> RFC 6749 code, so a dead refresh token reads `invalid_grant` and fails the connection
    error_aliases: dict[str, str] = field(default_factory=dict)
    transient_errors: tuple[str, ...] = ()  # codes meaning "try later" although answered with HTTP 200
    account_fields: dict[str, str] = field(default_factory=dict)  # account key -> "dotted.path" in the response
    metadata_fields: dict[str, str] = field(default_factory=dict)  # metadata key -> "dotted.path"
    # RFC 9207: the provider's discovery advertises authorization_response_iss_parameter_supported
    # but its callbacks carry no `iss` (name the evidence in the catalog entry's comment).
    callback_iss_unsent: bool = False
    callback_params: tuple[str, ...] = ()  # callback query parameters kept as metadata (realmId)
    scope_aliases: dict[str, str] = field(default_factory=dict)  # granted spelling -> requested spelling
    scope_strip_prefix: str = ""  # Entra may answer "https://graph.microsoft.com/User.Read"
    unreported_scopes: tuple[str, ...] = ()  # requested scopes the provider never echoes back in `scope`
    # the proxy and reconnect (issue 22; every entry states them; lint: _proxy_and_account_problems)
    # the proxy's upstream, template values filled; "{metadata.instance_url}" reads the connection
    # (a non-empty Provider.api_base_url wins: `manage.py provider upsert --api-base-url`)
    api_base_url: str = field(default="", metadata={"fill": True, **OVERRIDE})
    api_hosts: tuple[str, ...] = ()  # further hosts the proxy may reach ("*.my.salesforce.com")
    # how the proxy injects the access token: {header = "X-Shopify-Access-Token", format = "{token}"};
    # default Authorization: Bearer {token} (issue 15)
    api_auth: dict[str, str] = field(default_factory=dict)
    # who the account is at the provider (reconnect): "id_token.CLAIM", "token.PATH",
    # "userinfo.PATH", "callback.NAME" or "param.NAME"; "" when the provider documents no stable id
    account_id_field: str = ""
    # sent on a reconnect's authorize URL only (issue 16: incremental consent where the
    # provider needs more than authorize_params already asks, e.g. prompt=consent)
    reconnect_authorize_params: dict[str, str] = field(default_factory=dict)
    # how a refresh token is obtained: "scope:NAME", "param:NAME=VALUE", "always", "app_setting", "none"
    offline_access: str = ""
    # -- static credentials (issue 18): a key or a login the user supplies instead of consent
    # "app" (issue 18): machine grants only (`grants`), no consent: a GitHub App's
    # installation tokens, a Google service account
    auth_mode: str = field(default="oauth2", metadata=choices("oauth2", "api_key", "basic", "app"))
    # How the proxy injects an api_key: header `credential_header` with value
    # `credential_format` ({api_key} filled), or, when set, the query parameter
    # `credential_query_param`. A basic credential is always `Authorization: Basic …`.
    credential_header: str = "Authorization"
    credential_format: str = "Bearer {api_key}"
    credential_query_param: str = ""
    api_headers: dict[str, str] = field(default_factory=dict)  # sent on every API call (anthropic-version)
    # A cheap authenticated GET made before a static credential is stored: 2xx = good,
    # 401/403 = invalid_credentials (nothing stored); "" = not verified.
    verify_url: str = field(default="", metadata=ENDPOINT)
    # -- machine grants (issue 18): `"flow": NAME` in request-connection, for the grants listed
    # client_credentials (RFC 6749 §4.4), jwt_bearer (RFC 7523: Google service accounts),
    # github_app (an app JWT exchanged at token_url for an installation token)
    grants: tuple[str, ...] = ()
    # request-connection fields this provider's client_credentials needs (Auth0: audience)
    grant_requires: tuple[str, ...] = ()

    def open_params(self) -> list[str]:
        """Parameters an agent may (or must) pass per connection: not operator-only, not fixed."""
        return sorted(
            name for name, param in self.params.items() if not param.operator_only and name not in self.settings
        )

    @classmethod
    def from_catalog(
        cls, entry: dict[str, Any], row, values: dict[str, str] | None, *, client_secret: str | None = None
    ) -> ProviderSpec:
        """The spec of `row` (a Provider) built on its catalog `entry`. Each catalog field takes
        the entry's value (coerced to the field's type) or the field's default; OVERRIDE fields
        take the row's non-empty column instead. With `values` (validated template values) the
        URLs are filled; with None they stay templates, enough to describe the provider.
        Endpoints a discovery document supplies are the registry's to add."""
        url_values = None if values is None else {**values, "client_id": quote(row.client_id or "", safe="")}
        found: dict[str, Any] = {}
        for spec_field in CATALOG_FIELDS:
            value = entry.get(spec_field.name, _ABSENT)
            if spec_field.metadata.get("row_override") and getattr(row, spec_field.name, None):
                value = getattr(row, spec_field.name)
            if value is _ABSENT:
                continue
            if (spec_field.metadata.get("url") or spec_field.metadata.get("fill")) and value and url_values is not None:
                value = fill(value, url_values, keep=spec_field.metadata.get("keep", ()))
            found[spec_field.name] = _coerce(spec_field, value)
        for name in QUIRK_PARAMS & set(values or {}):
            raw = values[name]
            found[name] = raw.lower() == "true" if name == "refresh_token_rotation" else int(raw)
        found.setdefault("display_name", row.name)
        found["authorize_params"] = {**entry.get("authorize_params", {}), **(row.authorize_params or {})}
        found["params"] = param_specs(entry)
        return cls(
            key=row.template,
            name=row.name,
            provider_id=str(row.pk),
            client_id=row.client_id,
            client_secret=client_secret,
            settings=dict(row.settings or {}),
            values=dict(values or {}),
            **found,
        )


_ABSENT = object()
CATALOG_FIELDS = tuple(f for f in fields(ProviderSpec) if f.metadata.get("source") != "row")
# Every key a catalog table may hold (catalog.toml's header explains each). A key outside
# this set is a typo that would otherwise be ignored silently.
CATALOG_KEYS = frozenset(f.name for f in CATALOG_FIELDS)
URL_KEYS = tuple(f.name for f in CATALOG_FIELDS if f.metadata.get("url"))
ENDPOINT_KEYS = tuple(f.name for f in CATALOG_FIELDS if f.metadata.get("endpoint"))
_CHOICES = {f.name: f.metadata["choices"] for f in CATALOG_FIELDS if "choices" in f.metadata}
# Placeholders filled by the broker itself (client_id) or kept for the hooks (issuer's
# {tenantid}), never by a parameter.
_BUILTIN_PLACEHOLDERS = {
    "revocation_url": {"client_id"},
    **{f.name: set(f.metadata["keep"]) for f in CATALOG_FIELDS if "keep" in f.metadata},
}


def _coerce(spec_field, value: Any) -> Any:
    """A catalog (TOML) or row (JSON) value as the field holds it: lists as tuples, tables as
    fresh dicts (the cached catalog is never shared), flags as bools."""
    if spec_field.default_factory is dict:
        return dict(value)
    if isinstance(spec_field.default, tuple):
        return tuple(value)
    if isinstance(spec_field.default, bool):
        return bool(value)
    return value


def validate_params(entry: dict[str, Any], values: dict[str, Any], *, operator: bool = False) -> dict[str, str]:
    """Check template values against the catalog's patterns, so a parameter can never point
    the broker at a host the template does not name. Agents (operator=False) may not set
    operator-only parameters. Messages never echo the rejected value."""
    specs = param_specs(entry)
    clean: dict[str, str] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise ProviderConfigError(f"unknown parameter {str(name)[:64]!r} (this provider takes: {known})")
        if spec.operator_only and not operator:
            raise ProviderConfigError(f"parameter {name!r} is set by the operator, not per connection")
        if not isinstance(value, str) or len(value) > MAX_PARAM_LENGTH or not re.fullmatch(spec.pattern, value):
            hint = f" (expected something like {spec.example!r})" if spec.example else ""
            raise ProviderConfigError(f"parameter {name!r} has an invalid value{hint}")
        clean[name] = value
    return clean


def resolve_values(entry: dict[str, Any], *, fixed: dict[str, Any], given: dict[str, Any]) -> dict[str, str]:
    """The template values for one connection: the operator's fixed ones, then the agent's
    (which may only fill what the operator left open), then the catalog's defaults."""
    specs = param_specs(entry)
    operator_values = validate_params(entry, {k: v for k, v in fixed.items() if k in specs}, operator=True)
    agent_values = validate_params(entry, given)
    for name, value in agent_values.items():
        if name in operator_values and operator_values[name] != value:
            raise ProviderConfigError(f"parameter {name!r} is fixed by the operator for this provider")
    defaults = {name: spec.default for name, spec in specs.items() if spec.default is not None}
    return {**defaults, **agent_values, **operator_values}


def fill(url: str, values: dict[str, str], *, keep: tuple[str, ...] = ()) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in keep:
            return match.group(0)
        if name not in values:
            raise ProviderConfigError(f"parameter {name!r} is required")
        return values[name]

    return _PLACEHOLDER.sub(substitute, url)


def missing_params(entry: dict[str, Any], values: dict[str, str]) -> list[str]:
    return [name for name in param_specs(entry) if name not in values]
