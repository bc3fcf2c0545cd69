"""The JSON shapes the broker answers with (the gateway passes them through unchanged)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from broker_app.models import Connection, Provider
from broker_app.providers.registry import described
from broker_app.providers.spec import ProviderSpec
from broker_app.services.refresh_policy import renewable

ACCOUNT_KEYS = ("sub", "email", "name", "tid", "team_id")


def _scope_gap(connection: Connection, spec: ProviderSpec) -> list[str]:
    """Requested scopes the provider did not grant. Compared case-insensitively (Entra
    answers `user.read` for `User.Read`), ignoring scopes the provider never echoes back."""
    granted = {scope.casefold() for scope in connection.granted_scopes or []}
    if not granted:
        return []
    unreported = {scope.casefold() for scope in spec.unreported_scopes}
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
        elif connection.refresh_expires_at - now <= timedelta(days=settings.EXPIRY_WARNING_DAYS):
            warnings.append("refresh_token_expires_soon")
    if connection.expires_at and not renewable(connection):
        warnings.append("no_refresh_token")
    if missing_scopes:
        warnings.append("scopes_narrowed")
    if connection.attention:  # e.g. provider_rejected_token (the API proxy, issue 15)
        warnings.append(connection.attention)
    return warnings


def connection_as_dict(connection: Connection) -> dict[str, Any]:
    missing = _scope_gap(connection, described(connection.provider))
    account = {k: v for k, v in (connection.account or {}).items() if k in ACCOUNT_KEYS}
    return {
        "connection_id": connection.id,
        "status": connection.status,
        "flow": connection.flow,
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
        "tags": connection.tags or {},
        "connect_session_id": connection.connect_session_id,
    }


def _supports_revocation(spec: ProviderSpec) -> bool | None:
    if spec.revocation_url:
        return True
    if spec.oidc and spec.discovery_url:
        return None  # the discovery document decides
    return False


def provider_as_dict(provider: Provider) -> dict[str, Any]:
    spec = described(provider)
    open_names = spec.open_params()
    return {
        "name": spec.name,
        "display_name": spec.display_name,
        "provider_id": spec.provider_id,
        "template": spec.key,
        "default_scopes": list(spec.default_scopes),
        "supports_refresh": spec.refresh,
        "supports_pkce": spec.pkce != "none",
        "oidc": spec.oidc,
        "docs_url": spec.docs_url,
        "params": open_names,
        "scopes_url": spec.scopes_url,
        "supports_revocation": _supports_revocation(spec),
        "refresh_token_rotation": spec.refresh_token_rotation,
        "refresh_token_lifetime_days": spec.refresh_token_lifetime_days,
        "api_base_url": spec.api_base_url,
        "param_formats": {
            name: {
                "pattern": spec.params[name].pattern,
                "example": spec.params[name].example,
                "required": spec.params[name].default is None,
            }
            for name in open_names
        },
    }
