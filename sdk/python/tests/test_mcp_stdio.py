"""`dromos-mcp --transport stdio` as a real process, driven by the official `mcp` client over
stdio, against the fake gateway served over real HTTP (which can also drop every connection: the
gateway down). Every JSON-RPC message the client receives is recorded and scanned: the
provider token the fake holds never appears. The live end to end: test_mcp_live.py."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("mcp")

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import ElicitCompleteNotification, ElicitResult

sys.path.insert(0, str(Path(__file__).parent))
from mcp_support import SECRET_TOKEN, FakeGateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def served() -> Iterator[tuple[FakeGateway, str]]:
    gateway = FakeGateway()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            if gateway.down:  # drop the connection without an answer
                self.close_connection = True
                return
            length = int(self.headers.get("content-length") or 0)
            request = httpx.Request(
                self.command,
                f"http://gw{self.path}",
                headers=dict(self.headers),
                content=self.rfile.read(length),
            )
            response = gateway.handler(request)
            body = response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield gateway, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.anyio
async def test_stdio_session_elicits_completes_and_answers(
    served: tuple[FakeGateway, str], tmp_path: Path
) -> None:
    gateway, url = served
    command = shutil.which("dromos-mcp", path=str(Path(sys.executable).parent))
    assert command, "dromos-mcp console script not installed in this environment"
    params = StdioServerParameters(
        command=command,
        args=["--transport", "stdio", "--user-id", "alice", "--poll-interval", "0.1"],
        env={
            "DROMOS_GATEWAY_URL": url,
            "DROMOS_API_KEY": "dk_test",
            "DROMOS_MCP_STATE_FILE": str(tmp_path / "pending.json"),
        },
    )
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    async def on_elicit(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept")

    args = {"provider": "oidc", "method": "GET", "path": "/userinfo"}
    async with Client(
        stdio_client(params),
        mode="legacy",
        message_handler=on_message,
        elicitation_callback=on_elicit,
    ) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("call_api", args)
        assert raised.value.code == -32042
        elicitation = raised.value.data["elicitations"][0]
        gateway.consent(next(iter(gateway.connections)))
        with anyio.fail_after(10):
            while not any(isinstance(m, ElicitCompleteNotification) for m in received):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        (done,) = [m for m in received if isinstance(m, ElicitCompleteNotification)]
        assert done.params.elicitation_id == elicitation["elicitationId"]
        result = await client.call_tool("call_api", args)
        received.append(result)

        # Huge and binary answers are bounded on the wire too.
        big = await client.call_tool("call_api", {**args, "path": "/big"})
        assert big.structured_content["body"].endswith("[truncated: showing 65536 of 200000 bytes]")
        binary = await client.call_tool("call_api", {**args, "path": "/binary"})
        assert binary.structured_content["body"].startswith(
            "[binary body: 5006 bytes of image/png, sha256 "
        )
        received += [big, binary]

        # The gateway goes down: a clear tool error, and the server keeps running.
        gateway.down = True
        failed = await client.call_tool("call_api", args)
        assert failed.is_error and "cannot be reached" in failed.model_dump_json()
        gateway.down = False
        again = await client.call_tool("call_api", args)
        assert again.structured_content["body"] == {"sub": "alice"}
    assert result.structured_content["body"] == {"sub": "alice"}
    transcript = json.dumps([repr(m) for m in received]) + repr(raised.value.data)
    assert SECRET_TOKEN not in transcript


@pytest.mark.anyio
async def test_streamable_http_session(served: tuple[FakeGateway, str], tmp_path: Path) -> None:
    import socket
    import subprocess

    from mcp.client.streamable_http import streamable_http_client

    gateway, url = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = shutil.which("dromos-mcp", path=str(Path(sys.executable).parent))
    assert command
    process = subprocess.Popen(  # noqa: ASYNC220 (a server for the whole test)
        [
            command,
            "--transport",
            "http",
            "--port",
            str(port),
            "--user-id",
            "alice",
            "--poll-interval",
            "0.1",
        ],
        env={
            "DROMOS_GATEWAY_URL": url,
            "DROMOS_API_KEY": "dk_test",
            "DROMOS_MCP_STATE_FILE": str(tmp_path / "pending.json"),
            "PATH": "/usr/bin",
        },
        stderr=subprocess.DEVNULL,
    )
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    async def on_elicit(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept")

    args = {"provider": "oidc", "method": "GET", "path": "/userinfo"}
    try:
        with anyio.fail_after(60):  # a cold start on a loaded 2-core machine takes 10 s+
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)  # noqa: ASYNC210
                    break
                except httpx.TransportError:
                    await anyio.sleep(0.1)
        async with Client(
            streamable_http_client(f"http://127.0.0.1:{port}/mcp"),
            mode="legacy",
            message_handler=on_message,
            elicitation_callback=on_elicit,
        ) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("call_api", args)
            assert raised.value.code == -32042
            elicitation_id = raised.value.data["elicitations"][0]["elicitationId"]
            gateway.consent(next(iter(gateway.connections)))
            with anyio.fail_after(10):
                while not [m for m in received if isinstance(m, ElicitCompleteNotification)]:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            (done,) = [m for m in received if isinstance(m, ElicitCompleteNotification)]
            assert done.params.elicitation_id == elicitation_id
            result = await client.call_tool("call_api", args)
    finally:
        process.terminate()
        process.wait(10)
    assert result.structured_content["body"] == {"sub": "alice"}
