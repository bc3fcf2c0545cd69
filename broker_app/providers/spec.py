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
            specs[name] = ParamSpec(name=name, pattern=raw["pattern"], example=raw.get("example", ""),
                                    operator_only=bool(raw.get("operator_only", False)),
                                    default=raw.get("default"))
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
        if (not isinstance(value, str) or len(value) > MAX_PARAM_LENGTH
                or not re.fullmatch(spec.pattern, value)):
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
    return sorted(name for name, spec in param_specs(entry).items()
                  if not spec.operator_only and name not in (settings or {}))
