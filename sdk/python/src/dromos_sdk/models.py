"""Typed, immutable objects returned by the clients.

Each has a ``from_dict`` constructor that reads the gateway's JSON (see docs/api.md).
Lists become tuples; ISO 8601 timestamps (``"2026-11-26T21:00:00Z"``) become timezone-aware
``datetime`` objects in UTC; ``null`` stays ``None``. Unknown fields are ignored so that a
newer gateway does not break an older SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "Connection",
    "ConnectionPage",
    "ConnectionRequest",
    "ConnectionStatus",
    "DeviceConnectionRequest",
    "ParamFormat",
    "Provider",
    "Token",
    "parse_timestamp",
]


class ConnectionStatus(StrEnum):
    """The documented connection states. ``Connection.status`` is a plain ``str`` (a future
    gateway may add states), and compares equal to these members."""

    PENDING = "pending"
    ACTIVE = "active"
    FAILED = "failed"
    REVOKED = "revoked"


def parse_timestamp(value: Any) -> datetime | None:
    """Parse a wire timestamp (ISO 8601, ``Z`` or an offset) into an aware datetime.

    ``None`` stays ``None``; a timestamp without an offset is taken as UTC.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"timestamp must be a string or null, not {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def _opt_str(data: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string or null, not {type(value).__name__}")
    return value


def _strs(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key) or ()
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{key!r} must be a list of strings")
    return tuple(value)


def _opt_bool(data: Mapping[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{key!r} must be a boolean or null, not {type(value).__name__}")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{key!r} must be an integer or null, not {type(value).__name__}")
    return value


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{key!r} must be an object")
    return dict(value)


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """The answer to ``request_connection``: send the user's browser to ``auth_url``."""

    auth_url: str
    state: str
    scopes: tuple[str, ...]
    provider_id: str
    connection_id: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectionRequest:
        return cls(
            auth_url=_str(data, "authUrl"),
            state=_str(data, "state"),
            scopes=_strs(data, "scopes"),
            provider_id=str(data.get("provider_id") or ""),
            connection_id=_str(data, "connection_id"),
        )


@dataclass(frozen=True, slots=True)
class DeviceConnectionRequest:
    """The answer to ``request_device_connection`` (RFC 8628): show the user ``user_code``
    and ``verification_uri`` (or ``verification_uri_complete``), then wait for the
    connection to turn ``active``; it fails with ``access_denied`` or ``expired_token``."""

    connection_id: str
    provider_id: str
    scopes: tuple[str, ...]
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: datetime | None
    interval: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceConnectionRequest:
        return cls(
            connection_id=_str(data, "connection_id"),
            provider_id=str(data.get("provider_id") or ""),
            scopes=_strs(data, "scopes"),
            user_code=_str(data, "user_code"),
            verification_uri=_str(data, "verification_uri"),
            verification_uri_complete=_opt_str(data, "verification_uri_complete"),
            expires_at=parse_timestamp(data.get("expires_at")),
            interval=_opt_int(data, "interval") or 5,
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """One user's link to one provider. Holds no token."""

    connection_id: str
    status: str
    flow: str = ""  # code, device, api_key, basic, client_credentials, jwt_bearer, github_app
    provider_name: str = ""
    provider_id: str = ""
    user_id: str = ""
    scopes: tuple[str, ...] = ()
    granted_scopes: tuple[str, ...] = ()
    scopes_narrowed: bool = False
    missing_scopes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    error_description: str | None = None
    account: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    refresh_token_expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    activated_at: datetime | None = None
    last_refreshed_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    connect_session_id: str | None = None

    @property
    def is_active(self) -> bool:
        return self.status == ConnectionStatus.ACTIVE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Connection:
        return cls(
            connection_id=_str(data, "connection_id"),
            status=_str(data, "status"),
            flow=_opt_str(data, "flow") or "",
            provider_name=_opt_str(data, "provider_name") or "",
            provider_id=str(data.get("provider_id") or ""),
            user_id=_opt_str(data, "user_id") or "",
            scopes=_strs(data, "scopes"),
            granted_scopes=_strs(data, "granted_scopes"),
            scopes_narrowed=bool(data.get("scopes_narrowed", False)),
            missing_scopes=_strs(data, "missing_scopes"),
            warnings=_strs(data, "warnings"),
            error=_opt_str(data, "error"),
            error_description=_opt_str(data, "error_description"),
            account=_mapping(data, "account"),
            metadata=_mapping(data, "metadata"),
            expires_at=parse_timestamp(data.get("expires_at")),
            refresh_token_expires_at=parse_timestamp(data.get("refresh_token_expires_at")),
            created_at=parse_timestamp(data.get("created_at")),
            updated_at=parse_timestamp(data.get("updated_at")),
            activated_at=parse_timestamp(data.get("activated_at")),
            last_refreshed_at=parse_timestamp(data.get("last_refreshed_at")),
            tags={str(k): str(v) for k, v in _mapping(data, "tags").items()},
            connect_session_id=_opt_str(data, "connect_session_id"),
        )


@dataclass(frozen=True, slots=True)
class Token:
    """An access token for one connection.

    ``access_token`` and ``id_token`` are left out of ``repr()`` / ``str()`` so that a token
    object that ends up in a log line or a traceback does not leak the secret. Read the
    attributes explicitly when you need them, e.g. through :attr:`authorization`.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    id_token: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    provider_name: str = ""
    connection_id: str = ""
    #: ``token_type == "basic"`` (a static login): its parts; ``access_token`` is then
    #: base64(username:password), the value after ``Authorization: Basic``.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: ``("min_ttl_not_met",)`` when auto_refresh gave a token living less than ``min_ttl``
    #: (refreshed moments ago, or a refresh is in progress or unavailable); valid until expires_at.
    warnings: tuple[str, ...] = ()

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value for calls to the provider's API."""
        scheme = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        return f"{scheme} {self.access_token}"

    def expires_in(self, now: datetime | None = None) -> float | None:
        """Seconds until ``expires_at`` (negative once expired); ``None`` if unknown."""
        if self.expires_at is None:
            return None
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Token:
        return cls(
            access_token=_str(data, "access_token"),
            token_type=_opt_str(data, "token_type") or "Bearer",
            expires_at=parse_timestamp(data.get("expires_at")),
            id_token=_opt_str(data, "id_token"),
            scopes=_strs(data, "scopes"),
            provider_name=_opt_str(data, "provider_name") or "",
            connection_id=_opt_str(data, "connection_id") or "",
            username=_opt_str(data, "username"),
            password=_opt_str(data, "password"),
            warnings=_strs(data, "warnings"),
        )


@dataclass(frozen=True, slots=True)
class ParamFormat:
    """What one provider parameter (``Provider.params``) accepts."""

    pattern: str
    example: str = ""
    required: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamFormat:
        return cls(
            pattern=_str(data, "pattern"),
            example=_opt_str(data, "example") or "",
            required=bool(data.get("required", False)),
        )


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider configured on the broker."""

    name: str
    display_name: str = ""
    provider_id: str = ""
    default_scopes: tuple[str, ...] = ()
    supports_refresh: bool = False
    supports_pkce: bool = False
    docs_url: str | None = None
    params: tuple[str, ...] = ()
    template: str = ""
    oidc: bool = False
    scopes_url: str | None = None
    supports_revocation: bool | None = None
    refresh_token_rotation: bool = False
    refresh_token_lifetime_days: int | None = None
    param_formats: Mapping[str, ParamFormat] = field(default_factory=dict)
    api_base_url: str | None = None  # where client.proxy() calls go; None: not proxied

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provider:
        name = _str(data, "name")
        return cls(
            name=name,
            display_name=_opt_str(data, "display_name") or name,
            provider_id=str(data.get("provider_id") or ""),
            default_scopes=_strs(data, "default_scopes"),
            supports_refresh=bool(data.get("supports_refresh", False)),
            supports_pkce=bool(data.get("supports_pkce", False)),
            docs_url=_opt_str(data, "docs_url") or None,
            params=_strs(data, "params"),
            template=_opt_str(data, "template") or "",
            oidc=bool(data.get("oidc", False)),
            scopes_url=_opt_str(data, "scopes_url") or None,
            supports_revocation=_opt_bool(data, "supports_revocation"),
            refresh_token_rotation=bool(data.get("refresh_token_rotation", False)),
            refresh_token_lifetime_days=_opt_int(data, "refresh_token_lifetime_days"),
            api_base_url=_opt_str(data, "api_base_url") or None,
            param_formats={
                str(name): ParamFormat.from_dict(spec)
                for name, spec in _mapping(data, "param_formats").items()
            },
        )


@dataclass(frozen=True, slots=True)
class ConnectionPage:
    """One page of ``list_connections``. ``next`` / ``previous`` are the gateway's page
    URLs (or ``None``); ``count`` is the total number of matching connections."""

    count: int
    next: str | None
    previous: str | None
    results: tuple[Connection, ...]
    page: int = 1
    page_size: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectionPage:
        results = data["results"]
        if not isinstance(results, list):
            raise TypeError("'results' must be a list")
        return cls(
            count=int(data["count"]),
            next=_opt_str(data, "next"),
            previous=_opt_str(data, "previous"),
            results=tuple(Connection.from_dict(item) for item in results),
            page=int(data.get("page") or 1),
            page_size=int(data.get("page_size") or len(results)),
        )


@dataclass(frozen=True, slots=True)
class ConnectSessionCreated:
    """The answer to ``create_connect_session``: send the end user's browser to
    ``connect_url`` (single use; it expires at ``expires_at``)."""

    connect_url: str
    session_id: str
    expires_at: datetime | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectSessionCreated:
        return cls(
            connect_url=_str(data, "connect_url"),
            session_id=_str(data, "session_id"),
            expires_at=parse_timestamp(data.get("expires_at")),
        )


@dataclass(frozen=True, slots=True)
class ConnectSession:
    """A connect session's state (pending, started, completed, failed, expired) and the
    connections it produced."""

    session_id: str
    status: str
    user_id: str = ""
    allowed_providers: tuple[str, ...] = ()
    scopes: Mapping[str, Any] = field(default_factory=dict)
    return_url: str = ""
    tags: Mapping[str, Any] = field(default_factory=dict)
    reconnect: str | None = None
    error: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    used_at: datetime | None = None
    completed_at: datetime | None = None
    connections: tuple[Connection, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectSession:
        connections = data.get("connections") or []
        if not isinstance(connections, list):
            raise TypeError("'connections' must be a list")
        return cls(
            session_id=_str(data, "session_id"),
            status=_str(data, "status"),
            user_id=_opt_str(data, "user_id") or "",
            allowed_providers=_strs(data, "allowed_providers"),
            scopes=_mapping(data, "scopes"),
            return_url=_opt_str(data, "return_url") or "",
            tags=_mapping(data, "tags"),
            reconnect=_opt_str(data, "reconnect"),
            error=_opt_str(data, "error"),
            expires_at=parse_timestamp(data.get("expires_at")),
            created_at=parse_timestamp(data.get("created_at")),
            used_at=parse_timestamp(data.get("used_at")),
            completed_at=parse_timestamp(data.get("completed_at")),
            connections=tuple(Connection.from_dict(item) for item in connections),
        )


@dataclass(frozen=True, slots=True)
class ReconnectRequest:
    """The answer to ``reconnect``: a consent URL for the *same* connection id."""

    auth_url: str
    connection_id: str
    scopes: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReconnectRequest:
        return cls(
            auth_url=_str(data, "authUrl"),
            connection_id=_str(data, "connection_id"),
            scopes=_strs(data, "scopes"),
        )
