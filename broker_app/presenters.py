"""The JSON shapes the broker answers with (the gateway passes them through unchanged)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from broker_app.models import Connection, Provider
from broker_app.providers.spec import open_params, param_specs, template

# How long before a refresh token's end check-connection starts saying so: two weeks
# leaves time to ask the user to reconnect.
REFRESH_EXPIRY_WARNING = timedelta(days=14)
ACCOUNT_KEYS = ("sub", "email", "name", "tid", "team_id")


def _scope_gap(connection: Connection, entry: dict[str, Any]) -> list[str]:
    """Requested scopes the provider did not grant. Compared case-insensitively (Entra
    answers `user.read` for `User.Read`), ignoring scopes the provider never echoes back."""
    granted = {scope.casefold() for scope in connection.granted_scopes or []}
    if not granted:
        return []
    unreported = {scope.casefold() for scope in entry.get("unreported_scopes", [])}
    return sorted(
        scope for scope in connection.scopes if scope.casefold() not in granted and scope.casefold() not in unreported
    )


def connection_warnings(connection: Connection, *, missing_scopes: list[str]) -> list[str]:
    """Things an agent should act on before they break: codes, most urgent first."""
    if connection.status != Connection.Status.ACTIVE:
        return []
    warnings = []
    now = timezone.now()
    if connection.refresh_expires_at and connection.refresh_token_enc:
        if connection.refresh_expires_at <= now:
            warnings.append("refresh_token_expired")
        elif connection.refresh_expires_at - now <= REFRESH_EXPIRY_WARNING:
            warnings.append("refresh_token_expires_soon")
    if connection.expires_at and not connection.refresh_token_enc:
        warnings.append("no_refresh_token")
    if missing_scopes:
        warnings.append("scopes_narrowed")
    if connection.attention:  # e.g. provider_rejected_token (the API proxy, issue 15)
        warnings.append(connection.attention)
    return warnings


def connection_as_dict(connection: Connection) -> dict[str, Any]:
    entry = template(connection.provider.template)
    missing = _scope_gap(connection, entry)
    account = {k: v for k, v in (connection.account or {}).items() if k in ACCOUNT_KEYS}
    return {
        "connection_id": connection.id,
        "status": connection.status,
        "provider_name": connection.provider.name,
        "provider_id": str(connection.provider_id),
        "user_id": connection.user_id,
        "scopes": connection.scopes,
        "granted_scopes": connection.granted_scopes or [],
        "scopes_narrowed": bool(missing),
        "missing_scopes": missing,
        "error": connection.error or None,
        "error_description": connection.error_description or None,
        "account": account,
        "metadata": connection.metadata or {},
        "expires_at": connection.expires_at,
        "refresh_token_expires_at": connection.refresh_expires_at,
        "warnings": connection_warnings(connection, missing_scopes=missing),
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
        "activated_at": connection.activated_at,
        "last_refreshed_at": connection.last_refreshed_at,
    }


def _supports_revocation(provider: Provider, entry: dict[str, Any]) -> bool | None:
    if provider.revocation_url or entry.get("revocation_url"):
        return True
    if entry.get("oidc") and (provider.discovery_url or entry.get("discovery_url")):
        return None  # the discovery document decides
    return False


def provider_as_dict(provider: Provider) -> dict[str, Any]:
    entry = template(provider.template)
    specs = param_specs(entry)
    open_names = open_params(entry, provider.settings or {})
    return {
        "name": provider.name,
        "display_name": provider.display_name or entry.get("display_name", provider.name),
        "provider_id": str(provider.pk),
        "template": provider.template,
        "default_scopes": provider.default_scopes or entry.get("default_scopes", []),
        "supports_refresh": bool(entry.get("refresh", True)),
        "supports_pkce": entry.get("pkce", "S256") != "none",
        "oidc": bool(entry.get("oidc", False)),
        "docs_url": entry.get("docs_url", ""),
        "params": open_names,
        "scopes_url": entry.get("scopes_url", ""),
        "supports_revocation": _supports_revocation(provider, entry),
        "refresh_token_rotation": bool(entry.get("refresh_token_rotation", False)),
        "refresh_token_lifetime_days": entry.get("refresh_token_lifetime_days"),
        "api_base_url": provider.api_base_url or entry.get("api_base_url", ""),
        "param_formats": {
            name: {
                "pattern": specs[name].pattern,
                "example": specs[name].example,
                "required": specs[name].default is None,
            }
            for name in open_names
        },
    }
