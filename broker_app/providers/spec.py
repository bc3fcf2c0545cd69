"""A resolved provider: catalog template + configured row + per-connection parameters."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("catalog.toml")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
MAX_PARAM_LENGTH = 253  # a DNS name's limit; every template value is a host or a path segment


class ProviderConfigError(Exception):
    """The provider cannot be used as configured (missing endpoint, bad parameter …)."""


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict[str, Any]]:
    with CATALOG_PATH.open("rb") as handle:
        return tomllib.load(handle)


# Every key a catalog table may hold (catalog.toml's header explains each). A key outside
# this set is a typo that would otherwise be ignored silently.
CATALOG_KEYS = frozenset(
    {
        "display_name",
        "docs_url",
        "scopes_url",
        "setup_url",
        "discovery_url",
        "issuer",
        "authorize_url",
        "token_url",
        "refresh_url",
        "revocation_url",
        "userinfo_url",
        "jwks_uri",
        "oidc",
        "scope_separator",
        "scope_param",
        "pkce",
        "default_scopes",
        "authorize_params",
        "token_auth",
        "token_format",
        "token_headers",
        "refresh",
        "refresh_token_rotation",
        "refresh_token_lifetime_days",
        "refresh_params",
        "revocation_method",
        "revocation_auth",
        "revocation_format",
        "revocation_token_param",
        "revocation_token",
        "revocation_hint",
        "error_field",
        "error_aliases",
        "transient_errors",
        "account_fields",
        "metadata_fields",
        "callback_params",
        "scope_aliases",
        "scope_strip_prefix",
        "unreported_scopes",
        "hook",
        "id_token_algs",
        "params",
        # The authenticated API proxy (issue 15): where the provider's API lives, extra
        # hosts a proxied call may name (Dromos-Proxy-Host), how the credential is injected.
        "api_base_url",
        "api_hosts",
        "api_auth",
    }
)
URL_KEYS = (
    "discovery_url",
    "issuer",
    "authorize_url",
    "token_url",
    "refresh_url",
    "revocation_url",
    "userinfo_url",
    "jwks_uri",
    "api_base_url",
)
_CHOICES = {
    "pkce": ("S256", "required", "none"),
    "token_auth": ("client_secret_basic", "client_secret_post"),
    "token_format": ("form", "json"),
    "revocation_method": ("POST", "DELETE"),
    "revocation_auth": ("client", "basic", "post", "bearer", "none"),
    "revocation_format": ("form", "json", "none"),
    "revocation_token": ("refresh_token", "access_token"),
}
# Placeholders filled by the broker itself, never by a parameter.
_BUILTIN_PLACEHOLDERS = {"revocation_url": {"client_id"}, "issuer": {"tenantid"}}


def entry_problems(key: str, entry: dict[str, Any]) -> list[str]:
    """What is wrong with one catalog table (empty when nothing): unknown keys, endpoints
    that are not https, placeholders without a parameter, parameter patterns that are not
    anchored or reject their own example. tests/providers runs it over the whole catalog."""
    from broker_app.providers.hooks import HOOKS

    problems = [f"{key}: unknown key {name!r}" for name in sorted(set(entry) - CATALOG_KEYS)]
    if not entry.get("display_name"):
        problems.append(f"{key}: display_name is missing")
    if not entry.get("discovery_url") and not (entry.get("authorize_url") and entry.get("token_url")):
        if key != "oidc":  # the generic template gets its discovery URL from the operator
            problems.append(f"{key}: needs discovery_url or authorize_url + token_url")
    for name, allowed in _CHOICES.items():
        if name in entry and entry[name] not in allowed:
            problems.append(f"{key}: {name} must be one of {', '.join(allowed)}")
    if entry.get("hook", "default") not in HOOKS:
        problems.append(f"{key}: hook {entry['hook']!r} is not in hooks.HOOKS")
    lifetime = entry.get("refresh_token_lifetime_days")
    if lifetime is not None and (not isinstance(lifetime, int) or lifetime <= 0):
        problems.append(f"{key}: refresh_token_lifetime_days must be a positive integer")
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
        if name not in used:
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
    return problems


def catalog_problems() -> list[str]:
    return [problem for key, entry in catalog().items() for problem in entry_problems(key, entry)]


def template(key: str) -> dict[str, Any]:
    try:
        return catalog()[key]
    except KeyError:
        raise ProviderConfigError(f"unknown provider template {key!r}") from None


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


@dataclass(frozen=True)
class ProviderSpec:
    key: str
    name: str
    provider_id: str
    display_name: str
    client_id: str
    client_secret: str | None = field(repr=False)
    authorize_url: str
    token_url: str
    revocation_url: str = ""
    userinfo_url: str = ""
    discovery_url: str = ""
    issuer: str = ""
    jwks_uri: str = ""
    oidc: bool = False
    scope_separator: str = " "
    pkce: str = "S256"
    default_scopes: tuple[str, ...] = ()
    authorize_params: dict[str, str] = field(default_factory=dict)
    token_auth: str = "client_secret_basic"
    token_headers: dict[str, str] = field(default_factory=dict)
    refresh: bool = True
    refresh_token_rotation: bool = False
    refresh_token_lifetime_days: int | None = None
    id_token_algs: tuple[str, ...] = ("RS256",)
    hook: str = "default"
    settings: dict[str, Any] = field(default_factory=dict)
    docs_url: str = ""
    params: dict[str, str] = field(default_factory=dict)
    # -- quirks expressed as data (catalog keys of the same name) ---------------------------
    values: dict[str, str] = field(default_factory=dict)  # the resolved template values
    scope_param: str = "scope"  # Slack puts user scopes in `user_scope`
    token_format: str = "form"  # "json": Notion wants a JSON body at its token endpoint
    refresh_url: str = ""  # Figma refreshes at an endpoint of its own
    refresh_params: dict[str, str] = field(default_factory=dict)
    revocation_method: str = "POST"  # GitHub: DELETE
    revocation_auth: str = "client"  # "client" (token_auth), "bearer" (the token itself), "none"
    revocation_format: str = "form"  # "form", "json", "none" (no body)
    revocation_token_param: str = "token"
    revocation_token: str = "refresh_token"  # which stored token the endpoint revokes the grant with
    revocation_hint: bool = True  # send token_type_hint (RFC 7009) with form/json bodies
    error_field: str = "error"  # HubSpot names its error in `status`
    error_aliases: dict[str, str] = field(default_factory=dict)  # provider code -> RFC 6749 code
    transient_errors: tuple[str, ...] = ()  # error codes answered with HTTP 200 that are outages
    account_fields: dict[str, str] = field(default_factory=dict)  # account key -> dotted path in the response
    metadata_fields: dict[str, str] = field(default_factory=dict)  # metadata key -> dotted path
    callback_params: tuple[str, ...] = ()  # callback query parameters kept as metadata (realmId)
    scope_aliases: dict[str, str] = field(default_factory=dict)  # granted spelling -> requested spelling
    scope_strip_prefix: str = ""  # Entra may answer "https://graph.microsoft.com/User.Read"
    # -- the API proxy (issue 15) -------------------------------------------------------------
    api_base_url: str = ""  # "https://gmail.googleapis.com"; "" = the provider cannot be proxied
    api_hosts: tuple[str, ...] = ()  # further hosts a proxied call may name (Dromos-Proxy-Host)
    api_auth: dict[str, str] = field(default_factory=dict)  # {"header", "format"}: how the token is sent


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


def open_params(entry: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Parameters an agent may (or must) pass per connection: not operator-only, not fixed."""
    return sorted(
        name for name, spec in param_specs(entry).items() if not spec.operator_only and name not in (settings or {})
    )
