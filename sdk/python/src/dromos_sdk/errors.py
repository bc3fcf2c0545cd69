"""Exceptions raised by the Dromos clients.

Every exception derives from :class:`DromosError`. An HTTP error answer from the gateway
is an :class:`APIError` (one subclass per documented status); a gateway that could not be
reached at all, after the retries, is a :class:`TransportError`.

No message built here ever contains a token or an API key: messages carry the status,
the gateway's error code and its human message, and the connection id where one applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Connection


class DromosError(Exception):
    """Base class of every error raised by this package."""


class APIError(DromosError):
    """The gateway answered with an HTTP error status.

    Attributes:
        status_code: the HTTP status (400, 401, …).
        code: the gateway's machine-readable ``error`` field (``"invalid_request"``, …).
        message: the gateway's human-readable ``message`` field.
        status: the connection's status, when the gateway sent one (409 answers).
        retry_after: seconds the gateway asked the client to wait (``Retry-After``), if any.
        details: per-field validation messages (400 answers), if any.
        body: the whole decoded JSON error body ({} when the body was not JSON).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        status: str | None = None,
        retry_after: float | None = None,
        *,
        details: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.details: Mapping[str, Any] = dict(details or {})
        self.body: Mapping[str, Any] = dict(body or {})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default exception pickling.
        return (
            _rebuild_api_error,
            (
                type(self),
                self.status_code,
                self.code,
                self.message,
                self.status,
                self.retry_after,
                dict(self.details),
                dict(self.body),
            ),
        )


def _rebuild_api_error(
    cls: type[APIError],
    status_code: int,
    code: str,
    message: str,
    status: str | None,
    retry_after: float | None,
    details: dict[str, Any],
    body: dict[str, Any],
) -> APIError:
    return cls(status_code, code, message, status, retry_after, details=details, body=body)


class InvalidRequestError(APIError):
    """400: a missing or malformed field, an unknown provider, a refused return URL."""


class UnauthorizedError(APIError):
    """401: no API key, or a malformed, unknown or revoked one."""


class ForbiddenError(APIError):
    """403: the API key lacks the scope for this operation."""


class NotFoundError(APIError):
    """404: unknown connection (or one that belongs to another workspace)."""


class ConnectionNotActiveError(APIError):
    """409: a token or refresh was asked of a connection that is not ``active``.

    ``status`` holds the connection's status (``pending``, ``failed``, ``revoked``);
    ``reconnect_required`` tells whether the user must go through consent again.
    """

    @property
    def reconnect_required(self) -> bool:
        return bool(self.body.get("reconnect_required", False))


class RateLimitedError(APIError):
    """429: the API key is throttled (``code`` ``rate_limited``), or too many of its or its
    workspace's calls are already waiting on providers (``concurrency_limited``);
    ``retry_after`` says for how long. Retried like every 429."""


class UpstreamError(APIError):
    """502: the OAuth provider or the broker answered badly."""


class UnavailableError(APIError):
    """503: the broker is unreachable, the provider is temporarily down, another caller's
    refresh of the connection is in progress (``code`` ``refresh_in_progress``), or the
    service's database is (``service_unavailable``); retried like every 503."""


class TransportError(DromosError):
    """The gateway could not be reached (connection refused, timeout, dropped connection),
    even after the retries. The underlying ``httpx`` exception is ``__cause__``."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transport_error, (str(self), self.attempts))


def _rebuild_transport_error(message: str, attempts: int) -> TransportError:
    return TransportError(message, attempts=attempts)


class UnexpectedResponseError(DromosError):
    """A success answer whose body is not the JSON the wire contract describes."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unexpected, (str(self), self.status_code))


def _rebuild_unexpected(message: str, status_code: int) -> UnexpectedResponseError:
    return UnexpectedResponseError(message, status_code=status_code)


class ConnectionFailedError(DromosError):
    """``wait_for_active`` saw the connection end up ``failed`` or ``revoked``.

    ``connection`` is the last :class:`~dromos_sdk.Connection` seen; ``status``, ``error``
    and ``error_description`` are copied from it for convenience.
    """

    def __init__(self, connection: Connection) -> None:
        reason = f" ({connection.error})" if connection.error else ""
        super().__init__(f"connection {connection.connection_id} is {connection.status}{reason}")
        self.connection = connection
        self.connection_id = connection.connection_id
        self.status = connection.status
        self.error = connection.error
        self.error_description = connection.error_description

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.connection,))


class WaitTimeoutError(DromosError, TimeoutError):
    """``wait_for_active`` gave up: the connection was still not active after ``timeout``
    seconds. ``last_status`` is the status seen at the last poll."""

    def __init__(self, connection_id: str, timeout: float, last_status: str) -> None:
        super().__init__(f"connection {connection_id} still {last_status} after {timeout:g}s")
        self.connection_id = connection_id
        self.timeout = timeout
        self.last_status = last_status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.connection_id, self.timeout, self.last_status))


STATUS_ERRORS: Mapping[int, type[APIError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConnectionNotActiveError,
    429: RateLimitedError,
    502: UpstreamError,
    503: UnavailableError,
}
"""The exception class raised for each documented status; others raise plain APIError."""
