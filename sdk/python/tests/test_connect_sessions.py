"""Connect sessions, reconnect and the tag filter (issue 16), on both clients."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from conftest import BASE_URL, MakeHarness, connection_json
from dromos_sdk import ConnectSession, ConnectSessionCreated, ReconnectRequest


def test_create_connect_session(make_harness: MakeHarness) -> None:
    answer = {
        "connect_url": "https://broker.example/connect/tok",
        "session_id": "cs_1",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    h = make_harness(httpx.Response(201, json=answer))
    result = h.call(
        "create_connect_session",
        "https://app.example/done",
        user_id="u1",
        allowed_providers=["google"],
        scopes={"google": "openid email"},
        tags={"team": "support"},
        expires_in=600,
    )
    assert isinstance(result, ConnectSessionCreated)
    assert result.session_id == "cs_1" and result.connect_url.endswith("/connect/tok")
    assert str(h.gateway.last.url) == f"{BASE_URL}/v1/connect-sessions"
    assert h.gateway.body() == {
        "return_url": "https://app.example/done",
        "user_id": "u1",
        "allowed_providers": ["google"],
        "scopes": {"google": ["openid", "email"]},
        "tags": {"team": "support"},
        "expires_in": 600,
    }


def test_get_connect_session(make_harness: MakeHarness) -> None:
    connection = {**connection_json(), "tags": {"team": "support"}, "connect_session_id": "cs_1"}
    answer = {"session_id": "cs_1", "status": "completed", "connections": [connection]}
    h = make_harness(httpx.Response(200, json=answer))
    result = h.call("get_connect_session", "cs_1")
    assert isinstance(result, ConnectSession)
    assert result.status == "completed"
    assert result.connections[0].tags == {"team": "support"}
    assert result.connections[0].connect_session_id == "cs_1"
    assert str(h.gateway.last.url) == f"{BASE_URL}/v1/connect-sessions/cs_1"


def test_reconnect(make_harness: MakeHarness) -> None:
    answer = {
        "authUrl": "https://idp/auth",
        "connection_id": "c_1",
        "scopes": ["openid", "profile"],
    }
    h = make_harness(httpx.Response(201, json=answer))
    result = h.call("reconnect", "c_1", scopes=["profile"])
    assert isinstance(result, ReconnectRequest)
    assert result.connection_id == "c_1" and result.scopes == ("openid", "profile")
    assert h.gateway.last.method == "POST"
    assert str(h.gateway.last.url) == f"{BASE_URL}/v1/connections/c_1/reconnect"
    assert h.gateway.body() == {"scopes": ["profile"]}


def test_list_connections_by_tags(make_harness: MakeHarness) -> None:
    page: dict[str, object] = {
        "count": 0,
        "page": 1,
        "page_size": 50,
        "next": None,
        "previous": None,
        "results": [],
    }
    h = make_harness(httpx.Response(200, json=page))
    h.call("list_connections", tags={"team": "support", "env": "prod"})
    query = parse_qs(urlsplit(str(h.gateway.last.url)).query)
    assert query["tag"] == ["env:prod", "team:support"]
