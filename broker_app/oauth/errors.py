"""Errors of the OAuth protocol client, classified where they happen: a permanent failure
(the grant is gone, the request is wrong) is not a transient one (outage, timeout, 429)."""

from __future__ import annotations

import re

_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def safe_code(value: object, default: str = "provider_error") -> str:
    """An error code fit to echo in a redirect or a log: short, plain characters only."""
    text = str(value or "")
    return text if _CODE.match(text) else default


class OAuthError(Exception):
    transient = False

    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        self.error = safe_code(error)
        self.description = (description or "")[:300]
        self.status = status
        super().__init__(f"{self.error}: {self.description}" if self.description else self.error)


class PermanentOAuthError(OAuthError):
    """The provider refused for good (invalid_grant, invalid_client, 400/401)."""


class TransientOAuthError(OAuthError):
    """Outage, timeout, connection error or rate limit: try again later, touch nothing."""

    transient = True

    def __init__(
        self, error: str, description: str = "", *, status: int | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(error, description, status=status)
        self.retry_after = retry_after


class IdTokenError(Exception):
    """The id_token failed verification. The message names the check, never the token."""
