"""Every API method, on both clients: what goes on the wire and what comes back."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from conftest import (
    ACCESS_TOKEN,
    BASE_URL,
    MakeHarness,
    connection_json,
    provider_json,
    token_json,
)
from dromos_sdk import Connection, ConnectionPage, ConnectionRequest, Provider, Token

REQUEST_ANSWER = {
    "authUrl": "https://accounts.example/o/oauth2/auth?state=st_1",
    "state": "st_1",
    "scopes": ["openid", "email"],
    "provider_id": "p_1",
    "connection_id": "c_new",
}


def test_request_connection(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(201, json=REQUEST_ANSWER))
    result = h.call(
        "request_connection",
        "user-42",
        "google",
        ["openid", "email"],
        "https://app.example/done",
    )
    assert isinstance(result, ConnectionRequest)
    assert result.auth_url == REQUEST_ANSWER["authUrl"]
    assert result.connection_id == "c_new"
    assert result.state == "st_1"
    assert result.scopes == ("openid", "email")
    request = h.gateway.last
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/v1/request-connection"
    assert request.headers["Content-Type"] == "application/json"
    assert h.gateway.body() == {
        "user_id": "user-42",
        "provider_name": "google",
        "scopes": ["openid", "email"],
        "return_url": "https://app.example/done",
    }


def test_request_connection_with_params_and_scope_string(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(201, json=REQUEST_ANSWER))
    h.call(
        "request_connection",
        user_id="u",
        provider_name="microsoft",
        scopes="openid  offline_access",
        return_url="https://app.example/done",
        params={"tenant": "contoso"},
    )
    body = h.gateway.body()
    assert body["scopes"] == ["openid", "offline_access"]
    assert body["params"] == {"tenant": "contoso"}


def test_check_connection(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, json=connection_json(status="pending")))
    conn = h.call("check_connection", "c_abc123")
    assert isinstance(conn, Connection)
    assert conn.status == "pending"
    assert h.gateway.last.method == "GET"
    assert str(h.gateway.last.url) == f"{BASE_URL}/v1/check-connection/c_abc123"


def test_connection_id_is_escaped_in_the_path(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, json=connection_json()))
    h.call("check_connection", "../v1/providers?x=1")
    assert h.gateway.last.url.raw_path == b"/v1/check-connection/..%2Fv1%2Fproviders%3Fx%3D1"


@pytest.mark.parametrize(
    "method", ["check_connection", "get_token", "refresh", "delete_connection", "wait_for_active"]
)
def test_empty_connection_id_is_refused_locally(make_harness: MakeHarness, method: str) -> None:
    h = make_harness()
    with pytest.raises(ValueError, match="connection_id"):
        h.call(method, "")
    assert h.gateway.requests == []


def test_get_token_defaults(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, json=token_json(), headers={"Cache-Control": "no-store"}))
    token = h.call("get_token", "c_abc123")
    assert isinstance(token, Token)
    assert token.access_token == ACCESS_TOKEN
    assert token.expires_at == datetime(2026, 11, 26, 21, tzinfo=UTC)
    request = h.gateway.last
    assert request.method == "GET"
    assert request.url.path == "/v1/token/c_abc123"
    assert request.url.query == b""


def test_get_token_auto_refresh_and_min_ttl(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, json=token_json()))
    h.call("get_token", "c_abc123", auto_refresh=True, min_ttl=300)
    assert dict(h.gateway.last.url.params) == {"auto_refresh": "true", "min_ttl": "300"}


def test_get_token_rejects_negative_min_ttl(make_harness: MakeHarness) -> None:
    h = make_harness()
    with pytest.raises(ValueError, match="min_ttl"):
        h.call("get_token", "c_abc123", min_ttl=-1)


def test_get_token_null_expiry_no_id_token(make_harness: MakeHarness) -> None:
    data = token_json(expires_at=None)
    del data["id_token"]
    h = make_harness(httpx.Response(200, json=data))
    token = h.call("get_token", "c_abc123")
    assert token.expires_at is None
    assert token.id_token is None


def test_refresh(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, json=token_json(access_token="new-token")))
    token = h.call("refresh", "c_abc123")
    assert token.access_token == "new-token"
    request = h.gateway.last
    assert request.method == "POST"
    assert request.url.path == "/v1/refresh/c_abc123"
    assert request.content == b""


def test_list_connections_without_filters(make_harness: MakeHarness) -> None:
    page_json: dict[str, object] = {"count": 0, "next": None, "previous": None, "results": []}
    h = make_harness(httpx.Response(200, json=page_json))
    page = h.call("list_connections")
    assert page == ConnectionPage(count=0, next=None, previous=None, results=())
    assert h.gateway.last.url.path == "/v1/connections"
    assert h.gateway.last.url.query == b""


def test_list_connections_with_filters(make_harness: MakeHarness) -> None:
    page_json = {
        "count": 3,
        "next": f"{BASE_URL}/v1/connections?page=3&page_size=1",
        "previous": f"{BASE_URL}/v1/connections?page=1&page_size=1",
        "results": [connection_json(last_refreshed_at="2026-11-26T20:30:00Z")],
    }
    h = make_harness(httpx.Response(200, json=page_json))
    page = h.call(
        "list_connections",
        user_id="user-42",
        provider_name="google",
        status="active",
        page=2,
        page_size=1,
    )
    assert page.count == 3
    assert page.next == page_json["next"]
    assert page.previous == page_json["previous"]
    assert page.results[0].last_refreshed_at == datetime(2026, 11, 26, 20, 30, tzinfo=UTC)
    assert dict(h.gateway.last.url.params) == {
        "user_id": "user-42",
        "provider_name": "google",
        "status": "active",
        "page": "2",
        "page_size": "1",
    }


def test_delete_connection(make_harness: MakeHarness) -> None:
    h = make_harness(httpx.Response(200, json=connection_json(status="revoked")))
    conn = h.call("delete_connection", "c_abc123")
    assert conn.status == "revoked"
    assert h.gateway.last.method == "DELETE"
    assert h.gateway.last.url.path == "/v1/connections/c_abc123"


def test_list_providers(make_harness: MakeHarness) -> None:
    h = make_harness(
        httpx.Response(
            200,
            json={
                "providers": [
                    provider_json(),
                    provider_json(name="entra", display_name="Microsoft", params=["tenant"]),
                ]
            },
        )
    )
    providers = h.call("list_providers")
    assert [p.name for p in providers] == ["google", "entra"]
    assert all(isinstance(p, Provider) for p in providers)
    assert providers[1].params == ("tenant",)
    assert h.gateway.last.method == "GET"
    assert h.gateway.last.url.path == "/v1/providers"


DEVICE_ANSWER = {
    "connection_id": "c_dev",
    "provider_id": "p_1",
    "scopes": ["openid"],
    "user_code": "WDJB-MJHT",
    "verification_uri": "https://accounts.example/device",
    "verification_uri_complete": "https://accounts.example/device?user_code=WDJB-MJHT",
    "expires_at": "2026-11-26T21:10:00Z",
    "interval": 5,
}


def test_request_device_connection(make_harness: MakeHarness) -> None:
    from dromos_sdk import DeviceConnectionRequest

    h = make_harness(httpx.Response(201, json=DEVICE_ANSWER))
    result = h.call("request_device_connection", "user-42", "google", ["openid"])
    assert isinstance(result, DeviceConnectionRequest)
    assert (result.connection_id, result.user_code, result.interval) == ("c_dev", "WDJB-MJHT", 5)
    assert result.verification_uri_complete is not None
    assert result.verification_uri_complete.endswith("WDJB-MJHT")
    assert result.expires_at == datetime(2026, 11, 26, 21, 10, tzinfo=UTC)
    assert h.gateway.body() == {
        "user_id": "user-42",
        "provider_name": "google",
        "scopes": ["openid"],
        "flow": "device",
    }


def test_create_static_connection_and_replace_credentials(make_harness: MakeHarness) -> None:
    h = make_harness(
        httpx.Response(201, json=connection_json(connection_id="c_key", expires_at=None)),
        httpx.Response(200, json=connection_json(connection_id="c_key", expires_at=None)),
        httpx.Response(
            200,
            json=token_json(
                access_token="dXNlcjpwdw==",
                token_type="basic",
                username="user",
                password="pw",
                id_token=None,
            ),
        ),
    )
    created = h.call(
        "create_static_connection", "user-42", "openai", {"type": "api_key", "api_key": "sk-1"}
    )
    assert isinstance(created, Connection) and created.connection_id == "c_key"
    assert (
        h.gateway.last.method == "POST" and str(h.gateway.last.url) == f"{BASE_URL}/v1/connections"
    )
    assert h.gateway.body() == {
        "user_id": "user-42",
        "provider_name": "openai",
        "credentials": {"type": "api_key", "api_key": "sk-1"},
    }
    h.call("replace_credentials", "c_key", {"type": "basic", "username": "user", "password": "pw"})
    assert h.gateway.last.method == "PUT"
    assert str(h.gateway.last.url) == f"{BASE_URL}/v1/connections/c_key/credentials"
    assert h.gateway.body() == {
        "credentials": {"type": "basic", "username": "user", "password": "pw"}
    }
    token = h.call("get_token", "c_key")
    assert (token.token_type, token.username, token.password) == ("basic", "user", "pw")
    assert "pw" not in repr(token).replace("password", "")
    with pytest.raises(ValueError):
        h.call("create_static_connection", "u", "openai", {"type": "token", "value": "x"})


def test_request_machine_connection(make_harness: MakeHarness) -> None:
    answer = connection_json(connection_id="c_m2m", flow="client_credentials", account={})
    h = make_harness(httpx.Response(201, json=answer), httpx.Response(201, json=answer))
    created = h.call(
        "request_machine_connection",
        "billing-agent",
        "auth0",
        "client_credentials",
        ["read:invoices"],
        client_id="m2m-client",
        client_secret="m2m-secret",
        audience="https://api.example.com",
    )
    assert isinstance(created, Connection)
    assert (created.connection_id, created.flow, created.status) == (
        "c_m2m",
        "client_credentials",
        "active",
    )
    assert h.gateway.body() == {
        "user_id": "billing-agent",
        "provider_name": "auth0",
        "flow": "client_credentials",
        "scopes": ["read:invoices"],
        "client_id": "m2m-client",
        "client_secret": "m2m-secret",
        "audience": "https://api.example.com",
    }
    h.call(
        "request_machine_connection",
        "repo-bot",
        "acme-bot",
        "github_app",
        params={"installation_id": "42"},
    )
    assert h.gateway.body() == {
        "user_id": "repo-bot",
        "provider_name": "acme-bot",
        "flow": "github_app",
        "scopes": [],
        "params": {"installation_id": "42"},
    }


def test_request_machine_connection_refuses_a_consent_flow(make_harness: MakeHarness) -> None:
    h = make_harness()
    with pytest.raises(ValueError, match="flow must be one of"):
        h.call("request_machine_connection", "u", "google", "device")
