"""client.proxy(): a provider API call through the gateway's /v1/proxy (issue 15)."""

from __future__ import annotations

import httpx
import pytest

from conftest import API_KEY, BASE_URL, MakeHarness, error
from dromos_sdk import APIError, NotFoundError


def _provider_answer(status: int = 200, **kwargs: object) -> httpx.Response:
    headers = {"Dromos-Connection-Id": "c_abc123", "Content-Type": "application/json"}
    return httpx.Response(status, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_proxy_sends_the_call_and_returns_the_providers_answer(make_harness: MakeHarness) -> None:
    h = make_harness(_provider_answer(json={"id": "me"}))
    response = h.call(
        "proxy",
        "c_abc123",
        "get",
        "/gmail/v1/users/me/messages",
        params={"maxResults": "5"},
        headers={"Accept": "application/json", "Authorization": "Bearer not-sent", "X-Custom": "1"},
        retries=2,
    )
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200 and response.json() == {"id": "me"}
    request = h.gateway.last
    assert request.method == "GET"
    path = "/v1/proxy/c_abc123/gmail/v1/users/me/messages?maxResults=5"
    assert str(request.url) == f"{BASE_URL}{path}"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["X-Custom"] == "1" and request.headers["Dromos-Proxy-Retries"] == "2"
    assert "Dromos-Proxy-Retry" not in request.headers


def test_proxy_post_with_a_json_body_and_options(make_harness: MakeHarness) -> None:
    h = make_harness(_provider_answer(201, json={"ok": True}))
    response = h.call(
        "proxy",
        "c_abc123",
        "POST",
        "/chat.postMessage",
        json={"text": "hi"},
        retry=True,
        host="files.slack.com",
    )
    assert response.status_code == 201
    assert h.gateway.body() == {"text": "hi"}
    assert h.gateway.last.headers["Dromos-Proxy-Retry"] == "true"
    assert h.gateway.last.headers["Dromos-Proxy-Host"] == "files.slack.com"


def test_a_provider_error_is_returned_not_raised(make_harness: MakeHarness) -> None:
    h = make_harness(_provider_answer(404, json={"message": "Not Found"}))
    response = h.call("proxy", "c_abc123", "GET", "/repos/acme/missing")
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


def test_the_gateways_refusals_raise_typed_errors(make_harness: MakeHarness) -> None:
    h = make_harness(
        error(403, "proxy_forbidden", "no rule", missing_rule="google GET /x"),
        error(404, "not_found"),
    )
    with pytest.raises(APIError) as info:
        h.call("proxy", "c_abc123", "GET", "/x")
    assert info.value.status_code == 403 and info.value.code == "proxy_forbidden"
    with pytest.raises(NotFoundError):
        h.call("proxy", "c_abc123", "GET", "/x")


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("TRACE", "/x", {}),
        ("GET", "x", {}),
        ("POST", "/x", {"content": b"a", "json": {}}),
        ("GET", "/x", {"retries": -1}),
    ],
)
def test_bad_arguments_are_refused_locally(
    make_harness: MakeHarness, method: str, path: str, kwargs: dict[str, object]
) -> None:
    h = make_harness()
    with pytest.raises(ValueError):
        h.call("proxy", "c_abc123", method, path, **kwargs)
    assert h.gateway.requests == []
