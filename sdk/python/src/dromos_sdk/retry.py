"""Retry policy: which failures are retried, and how long to wait before each retry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

RETRYABLE_STATUSES = frozenset({429, 502, 503})
"""The only HTTP statuses ever retried. Any other 4xx is the caller's problem to fix."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the clients retry 429, 502, 503 answers and connection errors.

    Attributes:
        retries: retries after the first attempt (``retries=3`` → at most 4 requests).
            ``0`` disables retrying.
        base_delay: backoff before the first retry, in seconds; doubles on each retry.
        max_delay: ceiling of the exponential backoff, in seconds.
        max_retry_after: longest ``Retry-After`` the client will sleep through. A gateway
            asking for a longer wait gets the error raised at once (with ``retry_after``
            set), so a call never blocks for minutes without the caller knowing.

    The wait before retry *n* (0-based) is a "full jitter" backoff: a uniform random value
    in ``[0, min(max_delay, base_delay * 2**n)]``, unless the answer carried ``Retry-After``,
    which is honoured as given.
    """

    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must be >= 0")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(retries=0)

    def backoff(self, attempt: int, jitter: float) -> float:
        """Full-jitter backoff before retry number ``attempt`` (0-based).

        ``jitter`` is a uniform random number in ``[0, 1)``.
        """
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 64))
        return ceiling * jitter

    def delay(self, attempt: int, *, retry_after: float | None, jitter: float) -> float | None:
        """Seconds to wait before retry ``attempt`` of a retryable failure, or ``None`` to
        give up (retries used up, or a ``Retry-After`` longer than ``max_retry_after``)."""
        if attempt >= self.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return self.backoff(attempt, jitter)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds, or an HTTP date (RFC 9110).

    Returns ``None`` for a missing or unreadable header; never a negative number.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)
