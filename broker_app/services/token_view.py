"""The token an agent receives: decrypted from the row, shaped once."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime

from broker_app import crypto
from broker_app.models import Connection


@dataclass(frozen=True)
class TokenView:
    connection_id: str
    provider_name: str
    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scopes: list[str]
    id_token: str | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)  # a basic credential's login
    password: str | None = field(default=None, repr=False)
    # "min_ttl_not_met": auto_refresh could not (or, just after a refresh, would not) give a
    # token living min_ttl seconds; it is valid until expires_at.
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        body = {
            "access_token": self.access_token,
            "token_type": self.token_type or "Bearer",
            "expires_at": self.expires_at,
            "scopes": self.scopes,
            "provider_name": self.provider_name,
            "connection_id": self.connection_id,
        }
        if self.id_token:
            body["id_token"] = self.id_token
        if self.username is not None:
            body["username"], body["password"] = self.username, self.password
        if self.warnings:
            body["warnings"] = list(self.warnings)
        return body


def token_view(connection: Connection) -> TokenView:
    """Decrypt the row's tokens (the only place a served token is decrypted)."""
    if connection.token_type == "basic":  # a static login, stored as JSON
        login = json.loads(crypto.decrypt(connection.access_token_enc, aad=connection.aad("access_token")) or "{}")
        raw = f"{login.get('username', '')}:{login.get('password', '')}".encode()
        return TokenView(
            connection_id=connection.id,
            provider_name=connection.provider.name,
            access_token=base64.b64encode(raw).decode("ascii"),
            token_type="basic",
            expires_at=None,
            scopes=[],
            username=login.get("username", ""),
            password=login.get("password", ""),
        )
    return TokenView(
        connection_id=connection.id,
        provider_name=connection.provider.name,
        access_token=crypto.decrypt(connection.access_token_enc, aad=connection.aad("access_token")) or "",
        token_type=connection.token_type or "Bearer",
        expires_at=connection.expires_at,
        scopes=connection.granted_scopes or connection.scopes,
        id_token=crypto.decrypt(connection.id_token_enc, aad=connection.aad("id_token")),
    )
