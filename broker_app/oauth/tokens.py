"""The parsed result of a token endpoint call, independent of provider quirks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    expires_in: int | None = None
    refresh_expires_in: int | None = None
    scope: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Who the user is, when the token response says (Slack's authed_user, Notion's owner);
    # OIDC claims, when verified, take precedence.
    account: dict[str, Any] = field(default_factory=dict)


def normalise_token_type(value: Any) -> str:
    # Providers answer "bearer", "Bearer", "BEARER" or nothing at all.
    if not value or str(value).lower() == "bearer":
        return "Bearer"
    return str(value)[:32]


def parse_expires_in(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        seconds = int(float(value))
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None
