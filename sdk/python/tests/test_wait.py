"""wait_for_active, on both clients (with a fake clock and sleep)."""

from __future__ import annotations

import httpx
import pytest

from conftest import FAST_RETRY, MakeHarness, connection_json, error
from dromos_sdk import ConnectionFailedError, NotFoundError, WaitTimeoutError


def conn(status: str, **extra: object) -> httpx.Response:
    return httpx.Response(200, json=connection_json(status=status, **extra))


def test_polls_with_backoff_until_active(make_harness: MakeHarness) -> None:
    h = make_harness(conn("pending"), conn("pending"), conn("pending"), conn("active"))
    result = h.call("wait_for_active", "c_abc123", timeout=60, poll_interval=1.0)
    assert result.status == "active"
    assert h.sleeps == [1.0, 1.5, 2.25]
    assert {r.url.path for r in h.gateway.requests} == {"/v1/check-connection/c_abc123"}


def test_interval_is_capped(make_harness: MakeHarness) -> None:
    h = make_harness(*[conn("pending")] * 5, conn("active"))
    h.call("wait_for_active", "c_1", timeout=600, poll_interval=2.0, max_poll_interval=4.0)
    assert h.sleeps == [2.0, 3.0, 4.0, 4.0, 4.0]


def test_already_active_returns_at_once(make_harness: MakeHarness) -> None:
    h = make_harness(conn("active"))
    assert h.call("wait_for_active", "c_1").is_active
    assert h.sleeps == []


@pytest.mark.parametrize("status", ["failed", "revoked"])
def test_failed_or_revoked_raises(make_harness: MakeHarness, status: str) -> None:
    h = make_harness(
        conn("pending"),
        conn(status, error="access_denied", error_description="The user denied access"),
    )
    with pytest.raises(ConnectionFailedError) as info:
        h.call("wait_for_active", "c_abc123", timeout=60, poll_interval=1)
    err = info.value
    assert err.status == status
    assert err.error == "access_denied"
    assert err.error_description == "The user denied access"
    assert err.connection.connection_id == "c_abc123"
    assert str(err) == f"connection c_abc123 is {status} (access_denied)"


def test_timeout(make_harness: MakeHarness) -> None:
    h = make_harness(*[conn("pending")] * 10)
    with pytest.raises(WaitTimeoutError) as info:
        h.call("wait_for_active", "c_abc123", timeout=5, poll_interval=2, max_poll_interval=10)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.last_status == "pending"
    assert err.connection_id == "c_abc123"
    # 2 + 3 = 5 s: the last sleep is cut to end at the deadline, then one final poll
    assert h.sleeps == [2.0, 3.0]
    assert sum(h.sleeps) == 5.0
    assert len(h.gateway.requests) == 3


def test_zero_timeout_polls_once(make_harness: MakeHarness) -> None:
    h = make_harness(conn("pending"))
    with pytest.raises(WaitTimeoutError):
        h.call("wait_for_active", "c_1", timeout=0)
    assert len(h.gateway.requests) == 1


def test_transient_errors_while_polling_are_retried(
    make_harness: MakeHarness, max_jitter: None
) -> None:
    h = make_harness(
        conn("pending"),
        error(503, "broker_unavailable", retry_after=3),
        conn("active"),
        retry=FAST_RETRY,
    )
    assert h.call("wait_for_active", "c_1", poll_interval=1).is_active
    assert h.sleeps == [1.0, 3.0]


def test_not_found_propagates(make_harness: MakeHarness) -> None:
    h = make_harness(error(404, "not_found"))
    with pytest.raises(NotFoundError):
        h.call("wait_for_active", "c_1")


@pytest.mark.parametrize(
    "kwargs", [{"timeout": -1}, {"poll_interval": 0}, {"max_poll_interval": -1}]
)
def test_bad_arguments(make_harness: MakeHarness, kwargs: dict[str, float]) -> None:
    h = make_harness()
    with pytest.raises(ValueError):
        h.call("wait_for_active", "c_1", **kwargs)
    assert h.gateway.requests == []
