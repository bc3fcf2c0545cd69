"""A stateful fake gateway (httpx.MockTransport) and an MCP client harness for the
dromos_sdk.mcp tests. The real-process end-to-end test is tests/test_mcp_live.py."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from dromos_sdk import AsyncDromosClient, DromosClient, RetryPolicy

BASE_URL = "https://gw.example.test"
SECRET_TOKEN = "gho_SECRET-access-token-never-shown"


@dataclass
class FakeGateway:
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxied: list[str] = field(default_factory=list)
    down: bool = False
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, user_id: str, provider: str = "oidc", status: str = "active") -> str:
        cid = f"c_{next(self.counter):04d}"
        self.connections[cid] = {
            "connection_id": cid,
            "status": status,
            "provider_name": provider,
            "user_id": user_id,
            "scopes": ["openid"],
            "granted_scopes": ["openid"],
            "error": None,
            "account": {"sub": user_id},
        }
        return cid

    def consent(self, cid: str, *, deny: bool = False) -> None:
        conn = self.connections[cid]
        conn["status"] = "failed" if deny else "active"
        conn["error"] = "access_denied" if deny else None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if request.headers.get("authorization") != "Bearer dk_test":
            return httpx.Response(401, json={"error": "unauthorized", "message": "bad key"})
        if path == "/v1/providers":
            return httpx.Response(200, json={"providers": [{"name": "oidc"}, {"name": "github"}]})
        if path == "/v1/request-connection":
            data = json.loads(request.content)
            cid = self.add(data["user_id"], data["provider_name"], status="pending")
            return httpx.Response(
                201,
                json={
                    "authUrl": f"https://idp.example.test/auth?state=s{cid}",
                    "state": f"s{cid}",
                    "scopes": data["scopes"],
                    "provider_id": "p1",
                    "connection_id": cid,
                },
            )
        if path == "/v1/connections" and request.method == "GET":
            q = request.url.params
            results = [
                c
                for c in self.connections.values()
                if (not q.get("user_id") or c["user_id"] == q["user_id"])
                and (not q.get("provider_name") or c["provider_name"] == q["provider_name"])
                and (not q.get("status") or c["status"] == q["status"])
            ]
            return httpx.Response(
                200,
                json={"count": len(results), "next": None, "previous": None, "results": results},
            )
        for prefix in ("/v1/check-connection/", "/v1/connections/"):
            if path.startswith(prefix):
                conn = self.connections.get(path.removeprefix(prefix))
                if conn is None:
                    return httpx.Response(404, json={"error": "not_found", "message": "no such"})
                if request.method == "DELETE":
                    conn["status"] = "revoked"
                return httpx.Response(200, json=conn)
        if path.startswith("/v1/proxy/"):
            cid, _, api_path = path.removeprefix("/v1/proxy/").partition("/")
            return self.proxy(cid, "/" + api_path)
        return httpx.Response(404, json={"error": "not_found", "message": path})

    def proxy(self, cid: str, api_path: str) -> httpx.Response:
        conn = self.connections.get(cid)
        if conn is None:
            return httpx.Response(404, json={"error": "not_found", "message": "unknown"})
        if api_path.startswith("/admin"):
            return httpx.Response(
                403,
                json={
                    "error": "proxy_forbidden",
                    "message": "no rule",
                    "missing_rule": f"oidc GET {api_path}",
                },
            )
        if conn["status"] != "active":
            return httpx.Response(
                409,
                json={"error": "connection_not_active", "message": "x", "status": conn["status"]},
            )
        self.proxied.append(api_path)
        via = {"Dromos-Connection-Id": cid}
        if api_path == "/userinfo":
            return httpx.Response(200, json={"sub": conn["user_id"]}, headers=via)
        if api_path == "/big":
            return httpx.Response(200, text="x" * 200_000, headers=via)
        if api_path == "/binary":
            return httpx.Response(
                200,
                content=b"\x89PNG\r\n" + bytes(5000),
                headers={**via, "content-type": "image/png"},
            )
        if api_path == "/limited":
            return httpx.Response(429, json={}, headers={**via, "Retry-After": "30"})
        if api_path == "/down":
            return httpx.Response(503, text="down", headers=via)
        return httpx.Response(404, json={"message": "Not Found"}, headers=via)


def fake_client(gateway: FakeGateway) -> AsyncDromosClient:
    return AsyncDromosClient(
        BASE_URL,
        api_key="dk_test",
        transport=httpx.MockTransport(gateway.handler),
        retry=RetryPolicy.disabled(),
    )


@dataclass
class Session:
    client: Any
    messages: list[Any]


@asynccontextmanager
async def mcp_session(server: Any, *, url_elicitation: bool = True) -> AsyncIterator[Session]:
    from mcp.client import Client
    from mcp.types import ElicitResult

    messages: list[Any] = []

    async def on_message(message: Any) -> None:
        messages.append(message)

    async def on_elicit(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept")

    kwargs: dict[str, Any] = {"mode": "legacy", "message_handler": on_message}
    if url_elicitation:
        kwargs["elicitation_callback"] = on_elicit
    async with Client(server, **kwargs) as client:
        yield Session(client, messages)


def fake_sync_client(gateway: FakeGateway) -> DromosClient:
    return DromosClient(
        BASE_URL,
        api_key="dk_test",
        transport=httpx.MockTransport(gateway.handler),
        retry=RetryPolicy.disabled(),
    )
