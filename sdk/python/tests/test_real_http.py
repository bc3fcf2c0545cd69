"""Both clients over real sockets (httpx's own transports), against a tiny local server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from conftest import API_KEY, token_json
from dromos_sdk import (
    AsyncDromosClient,
    DromosClient,
    RetryPolicy,
    TransportError,
    UnavailableError,
)

NO_WAIT = RetryPolicy(retries=2, base_delay=0.0, max_delay=0.0)


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []
    answers: ClassVar[list[tuple[int, dict[str, Any], dict[str, str]]]] = []

    def do_GET(self) -> None:
        Handler.seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        status, body, headers = Handler.answers.pop(0)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.seen = []
    Handler.answers = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield f"http://{host!s}:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_sync_over_http(server: str) -> None:
    Handler.answers = [
        (503, {"error": "broker_unavailable", "message": "down"}, {"Retry-After": "0"}),
        (200, token_json(), {"Cache-Control": "no-store"}),
    ]
    with DromosClient(server, api_key=API_KEY, retry=NO_WAIT) as client:
        token = client.get_token("c_abc123", auto_refresh=True)
    assert token.connection_id == "c_abc123"
    assert [s["path"] for s in Handler.seen] == ["/v1/token/c_abc123?auto_refresh=true"] * 2
    assert Handler.seen[0]["auth"] == f"Bearer {API_KEY}"


@pytest.mark.anyio
async def test_async_over_http(server: str) -> None:
    Handler.answers = [
        (503, {"error": "broker_unavailable", "message": "down"}, {"Retry-After": "0"})
    ] * 3
    async with AsyncDromosClient(server, api_key=API_KEY, retry=NO_WAIT) as client:
        with pytest.raises(UnavailableError) as info:
            await client.get_token("c_abc123")
    assert info.value.retry_after == 0.0
    assert len(Handler.seen) == 3


def test_sync_connection_refused(closed_port_url: str) -> None:
    with (
        DromosClient(closed_port_url, api_key=API_KEY, retry=NO_WAIT) as client,
        pytest.raises(TransportError) as info,
    ):
        client.list_providers()
    assert info.value.attempts == 3


@pytest.mark.anyio
async def test_async_connection_refused(closed_port_url: str) -> None:
    async with AsyncDromosClient(closed_port_url, api_key=API_KEY, retry=NO_WAIT) as client:
        with pytest.raises(TransportError) as info:
            await client.list_providers()
    assert info.value.attempts == 3
