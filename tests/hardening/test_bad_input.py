"""Issue 14, finding 4: hostile input gets a JSON 4xx from the real gunicorn gateway and
broker, never a 500, a 502 the SDKs would retry, an HTML page, or a body read as empty."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.e2e

DEEP = b"[" * 5000 + b"]" * 5000  # 10 kB; Python's json recursed once per level
BODY = {"user_id": "u-chunked", "provider_name": "local", "scopes": ["openid"], "return_url": "http://127.0.0.1:1/r"}


def _json_error(response: requests.Response, status: int, code: str = "invalid_request") -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    body = response.json()
    assert body["error"] == code, body
    return body


def test_deeply_nested_json_is_a_400_at_the_gateway(hard_stack):
    response = hard_stack.gw("POST", "/v1/request-connection", data=DEEP, headers={"Content-Type": "application/json"})
    _json_error(response, 400)
    # Nested objects inside a valid request too.
    nested: object = "x"
    for _ in range(200):
        nested = {"a": nested}
    response = hard_stack.gw("POST", "/v1/request-connection", json={**BODY, "params": nested})
    _json_error(response, 400)


def test_deeply_nested_json_is_a_400_at_the_broker(hard_stack):
    response = requests.post(
        hard_stack.broker_url + "/internal/v1/connections",
        data=DEEP,
        headers={
            "Content-Type": "application/json",
            "X-API-Key": hard_stack.env["BROKER_API_KEY"],
            "X-Dromos-Workspace": "demo",
        },
        timeout=30,
    )
    _json_error(response, 400)


@pytest.mark.parametrize("page", ["1" + "0" * 29, "100001", "0", "-1", "1e3", "x"])
def test_out_of_range_page_is_a_400_at_the_gateway(hard_stack, page):
    response = hard_stack.gw("GET", "/v1/connections", params={"page": page})
    _json_error(response, 400)


@pytest.mark.parametrize(
    "params", [{"page": "1" + "0" * 29}, {"page": "100001"}, {"page_size": "1" + "0" * 29}, {"page_size": "201"}]
)
def test_out_of_range_page_is_a_400_at_the_broker(hard_stack, params):
    response = hard_stack.broker_get("/internal/v1/connections", params=params, headers={"X-Dromos-Workspace": "demo"})
    _json_error(response, 400)


def test_bounds_themselves_are_served(hard_stack):
    last = hard_stack.gw("GET", "/v1/connections", params={"page": "100000", "page_size": "200"})
    assert last.status_code == 200, last.text
    assert last.json()["results"] == []


def test_chunked_json_body_is_read(hard_stack):
    """requests sends a generator body with Transfer-Encoding: chunked and no Content-Length."""
    payload = json.dumps(BODY).encode()

    def chunks():
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    response = hard_stack.gw(
        "POST", "/v1/request-connection", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 201, response.text[:300]
    created = response.json()
    assert created["connection_id"].startswith("c_") and created["authUrl"]
    check = hard_stack.gw("GET", f"/v1/check-connection/{created['connection_id']}").json()
    assert check["user_id"] == "u-chunked" and check["status"] == "pending"


def test_oversized_chunked_body_is_413_json(hard_stack):
    def chunks():
        yield b'{"user_id": "'
        for _ in range(10):
            yield b"x" * 8192
        yield b'"}'

    response = hard_stack.gw(
        "POST", "/v1/request-connection", data=chunks(), headers={"Content-Type": "application/json"}
    )
    _json_error(response, 413, "request_too_large")


@pytest.mark.parametrize("path", ["/v1/providers", "/v1/connections", "/v1/token/c_nope", "/nowhere"])
def test_disallowed_host_is_json_400_at_the_gateway(hard_stack, path):
    response = hard_stack.gw("GET", path, headers={"Host": "evil.example"})
    body = _json_error(response, 400)
    assert "evil.example" not in response.text, body


def test_healthz_answers_whatever_the_host(hard_stack):
    """Liveness probes address the process by whatever name they have."""
    for url in (hard_stack.gateway_url, hard_stack.broker_url):
        assert requests.get(url + "/healthz", headers={"Host": "evil.example"}, timeout=10).status_code == 200


def test_disallowed_host_is_json_400_at_the_broker(hard_stack):
    response = hard_stack.broker_get(
        "/internal/v1/connections", headers={"Host": "evil.example", "X-Dromos-Workspace": "demo"}
    )
    _json_error(response, 400)
