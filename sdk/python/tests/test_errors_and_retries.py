"""Typed errors and the retry rules, on both clients."""

from __future__ import annotations

import httpx
import pytest

from conftest import API_KEY, FAST_RETRY, MakeHarness, error, token_json
from dromos_sdk import (
    APIError,
    ConnectionNotActiveError,
    DromosError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnexpectedResponseError,
    UpstreamError,
)

OK_TOKEN = httpx.Response(200, json=token_json())


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_request", InvalidRequestError),
        (401, "unauthorized", UnauthorizedError),
        (403, "forbidden", ForbiddenError),
        (404, "not_found", NotFoundError),
        (409, "connection_not_active", ConnectionNotActiveError),
        (413, "request_too_large", APIError),
        (500, "server_error", APIError),
    ],
)
def test_client_errors_are_typed_and_never_retried(
    make_harness: MakeHarness, status: int, code: str, cls: type[APIError]
) -> None:
    h = make_harness(error(status, code, "went wrong"), OK_TOKEN, retry=FAST_RETRY)
    with pytest.raises(cls) as info:
        h.call("get_token", "c_abc123")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, DromosError)
    assert (err.status_code, err.code, err.message) == (status, code, "went wrong")
    assert str(err) == f"{status} {code}: went wrong"
    assert len(h.gateway.requests) == 1
    assert h.sleeps == []


def test_400_carries_details(make_harness: MakeHarness) -> None:
    h = make_harness(
        error(400, "invalid_request", "bad input", details={"return_url": ["not allowed"]})
    )
    with pytest.raises(InvalidRequestError) as info:
        h.call("request_connection", "u", "google", ["openid"], "https://evil.example")
    assert info.value.details == {"return_url": ["not allowed"]}


@pytest.mark.parametrize(
    ("status", "reconnect"), [("revoked", True), ("pending", False), ("failed", True)]
)
def test_409_status_and_reconnect_required(
    make_harness: MakeHarness, status: str, reconnect: bool
) -> None:
    h = make_harness(
        error(409, "connection_not_active", "x", status=status, reconnect_required=reconnect)
    )
    with pytest.raises(ConnectionNotActiveError) as info:
        h.call("refresh", "c_abc123")
    assert info.value.status == status
    assert info.value.reconnect_required is reconnect


def test_error_without_json_body(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(NotFoundError) as info:
        h.call("check_connection", "c_1")
    assert info.value.code == "http_404"
    assert info.value.message == "Not Found"


def test_success_with_bad_body(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, text="not json"), httpx.Response(200, json={"x": 1}))
    with pytest.raises(UnexpectedResponseError) as info:
        h.call("get_token", "c_1")
    assert info.value.status_code == 200
    with pytest.raises(UnexpectedResponseError, match="access_token"):
        h.call("get_token", "c_1")


def test_429_retry_after_is_honoured(make_harness: MakeHarness, max_jitter: None) -> None:
    h = make_harness(error(429, "rate_limited", retry_after=7), OK_TOKEN, retry=FAST_RETRY)
    token = h.call("get_token", "c_abc123")
    assert token.connection_id == "c_abc123"
    assert h.sleeps == [7.0]
    assert len(h.gateway.requests) == 2


def test_503_retry_after_is_honoured(make_harness: MakeHarness) -> None:
    h = make_harness(
        error(503, "broker_unavailable", retry_after="2"),
        error(503, "provider_unavailable", retry_after="0.25"),
        OK_TOKEN,
        retry=FAST_RETRY,
    )
    h.call("refresh", "c_abc123")
    assert h.sleeps == [2.0, 0.25]


@pytest.mark.parametrize(
    ("status", "code"),
    [(502, "provider_error"), (502, "bad_gateway"), (503, "broker_unavailable")],
)
def test_5xx_retried_with_exponential_backoff_then_success(
    make_harness: MakeHarness, max_jitter: None, status: int, code: str
) -> None:
    h = make_harness(error(status, code), error(status, code), OK_TOKEN, retry=FAST_RETRY)
    assert h.call("get_token", "c_abc123").access_token
    assert h.sleeps == [0.5, 1.0]  # base 0.5, doubled; jitter drawn at its maximum
    assert len(h.gateway.requests) == 3
    # every attempt is the same request, with credentials
    assert {r.headers["Authorization"] for r in h.gateway.requests} == {f"Bearer {API_KEY}"}


def test_backoff_is_jittered_and_capped(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter([0.5, 0.0, 0.99])
    monkeypatch.setattr("dromos_sdk._core.random.random", lambda: next(draws))
    policy = RetryPolicy(retries=3, base_delay=1.0, max_delay=1.5)
    h = make_harness(error(502, "x"), error(502, "x"), error(502, "x"), OK_TOKEN, retry=policy)
    h.call("get_token", "c_1")
    assert h.sleeps == [0.5, 0.0, pytest.approx(1.485)]


def test_retries_exhausted_raises_typed_error(make_harness: MakeHarness) -> None:
    h = make_harness(*[error(503, "broker_unavailable")] * 4, retry=FAST_RETRY)
    with pytest.raises(UnavailableError) as info:
        h.call("list_providers")
    assert info.value.code == "broker_unavailable"
    assert len(h.gateway.requests) == 4  # 1 + 3 retries
    assert len(h.sleeps) == 3


def test_retries_exhausted_on_429_and_502(make_harness: MakeHarness) -> None:
    h = make_harness(
        error(429, "rate_limited", retry_after=1),
        error(429, "rate_limited", retry_after=1),
        error(502, "bad_gateway"),
        error(502, "bad_gateway"),
        retry=RetryPolicy(retries=1),
    )
    with pytest.raises(RateLimitedError) as rate:
        h.call("list_providers")
    assert rate.value.retry_after == 1.0
    with pytest.raises(UpstreamError):
        h.call("list_providers")
    assert len(h.gateway.requests) == 4


def test_retry_after_beyond_limit_raises_at_once(make_harness: MakeHarness) -> None:
    policy = RetryPolicy(retries=3, max_retry_after=30.0)
    h = make_harness(error(429, "rate_limited", retry_after=120), OK_TOKEN, retry=policy)
    with pytest.raises(RateLimitedError) as info:
        h.call("get_token", "c_1")
    assert info.value.retry_after == 120.0
    assert h.sleeps == []


def test_retries_disabled(make_harness: MakeHarness) -> None:
    h = make_harness(error(503, "broker_unavailable"), retry=RetryPolicy.disabled())
    with pytest.raises(UnavailableError):
        h.call("get_token", "c_1")
    assert len(h.gateway.requests) == 1


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_connection_error_retried_then_success(
    make_harness: MakeHarness, exc: Exception, max_jitter: None
) -> None:
    h = make_harness(exc, OK_TOKEN, retry=FAST_RETRY)
    assert h.call("get_token", "c_1").access_token
    assert h.sleeps == [0.5]


def test_connection_errors_exhausted_raise_transport_error(make_harness: MakeHarness) -> None:
    h = make_harness(*[httpx.ConnectError("connection refused")] * 4, retry=FAST_RETRY)
    with pytest.raises(TransportError) as info:
        h.call("check_connection", "c_1")
    err = info.value
    assert isinstance(err, DromosError)
    assert isinstance(err.__cause__, httpx.ConnectError)
    assert err.attempts == 4
    assert "ConnectError" in str(err) and "/v1/check-connection/c_1" in str(err)
    assert API_KEY not in str(err)
    assert len(h.gateway.requests) == 4


def test_unsupported_protocol_not_retried(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.UnsupportedProtocol("nope"), retry=FAST_RETRY)
    with pytest.raises(TransportError):
        h.call("check_connection", "c_1")
    assert h.sleeps == []


def test_post_is_retried_on_503(make_harness: MakeHarness) -> None:
    answer = {
        "authUrl": "https://a/x",
        "state": "s",
        "scopes": [],
        "provider_id": "p",
        "connection_id": "c_2",
    }
    h = make_harness(
        error(503, "broker_unavailable", retry_after=0),
        httpx.Response(201, json=answer),
        retry=FAST_RETRY,
    )
    assert h.call("request_connection", "u", "google", [], "https://a/done").connection_id == "c_2"
    assert h.gateway.body(0) == h.gateway.body(1)


def test_error_messages_never_contain_the_api_key(make_harness: MakeHarness) -> None:
    h = make_harness(error(401, "unauthorized", "unknown API key"))
    with pytest.raises(UnauthorizedError) as info:
        h.call("list_providers")
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)
