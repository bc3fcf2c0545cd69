from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dromos_sdk import RetryPolicy
from dromos_sdk.retry import RETRYABLE_STATUSES, parse_retry_after


def test_defaults() -> None:
    policy = RetryPolicy()
    assert policy.retries == 3
    assert RetryPolicy.disabled().retries == 0
    assert frozenset({429, 502, 503}) == RETRYABLE_STATUSES


def test_full_jitter_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retries=10, base_delay=0.5, max_delay=3.0)
    ceilings = [policy.backoff(n, 1.0) for n in range(5)]
    assert ceilings == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(2, 0.0) == 0.0
    assert policy.backoff(2, 0.25) == 0.5
    assert policy.backoff(10_000, 0.5) == 1.5  # no overflow on absurd attempt counts


def test_delay_gives_up_after_retries() -> None:
    policy = RetryPolicy(retries=2, base_delay=1.0, max_delay=10.0)
    assert policy.delay(0, retry_after=None, jitter=1.0) == 1.0
    assert policy.delay(1, retry_after=None, jitter=1.0) == 2.0
    assert policy.delay(2, retry_after=None, jitter=1.0) is None


def test_delay_honours_retry_after_within_limit() -> None:
    policy = RetryPolicy(retries=3, base_delay=0.1, max_delay=1.0, max_retry_after=30.0)
    assert policy.delay(0, retry_after=7.0, jitter=0.0) == 7.0  # not capped by max_delay
    assert policy.delay(0, retry_after=30.0, jitter=0.0) == 30.0
    assert policy.delay(0, retry_after=31.0, jitter=0.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"retries": -1}, {"base_delay": -1.0}, {"max_delay": -0.1}, {"max_retry_after": -1.0}],
)
def test_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 11, 26, 21, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 26 Nov 2026 21:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("Thu, 26 Nov 2026 20:00:00 GMT", now=now) == 0.0
