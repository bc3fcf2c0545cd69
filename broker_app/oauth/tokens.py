"""The parsed result of a token endpoint call, independent of provider quirks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Longer than any lifetime a provider states (Linear's legacy tokens: ten years), short
# enough that `now + timedelta(seconds=…)` never overflows on a nonsensical figure.
MAX_LIFETIME_SECONDS = 50 * 365 * 86400
_TOKEN_TYPES = {"bearer": "Bearer", "dpop": "DPoP", "mac": "MAC"}


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
    """Providers answer "bearer", "Bearer", "BEARER" or nothing at all: one spelling each
    for the schemes RFC 6750 / RFC 9449 name; anything else is kept (truncated)."""
    if not value:
        return "Bearer"
    text = str(value)
    return _TOKEN_TYPES.get(text.lower(), text[:32])


def parse_expires_in(value: Any) -> int | None:
    """A lifetime in seconds (Salesforce sends none, some providers send "3600" as text);
    None when absent, unparsable or not positive."""
    if value in (None, "") or isinstance(value, bool):
        return None
    try:
        seconds = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return min(seconds, MAX_LIFETIME_SECONDS) if seconds > 0 else None
