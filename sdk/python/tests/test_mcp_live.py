"""`dromos-mcp` end to end: real processes all the way. The official `mcp` client starts
`dromos-mcp` (stdio, then Streamable HTTP) and the example server of `@requires_connection`
against a live gateway + broker + Celery + the npm oidc-provider (scripts/test.sh starts
them; see tests/test_live.py). Consent is driven like a user's browser would at the URL the
elicitation carries. Every JSON-RPC message, in both directions, is recorded at the
transport and scanned for the access, refresh and ID tokens, the authorization code and the
API key; so are the servers' stderr and the pending-consent state file.

Environment (on top of tests/test_live.py's):
    DROMOS_BROKER_URL       the broker's base URL (its /auth/callback receives the code)
    DROMOS_E2E_MANAGE_CMD   a command that runs `manage.py` ARGS against the stack
                            (`python devtools/stack.py manage --workdir W`): the test reads
                            the connection's stored tokens with it, to look for them
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, quote, urlsplit

import anyio
import anyio.to_thread
import httpx
import pytest

pytest.importorskip("mcp")

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import ElicitCompleteNotification, ElicitResult

from dromos_sdk import DromosClient

REQUIRED = (
    "DROMOS_API_KEY",
    "DROMOS_E2E_PROVIDER",
    "DROMOS_E2E_RETURN_URL",
    "DROMOS_E2E_CONSENT_CMD",
    "DROMOS_BROKER_URL",
    "DROMOS_E2E_MANAGE_CMD",
)
EXAMPLE = Path(__file__).parents[1] / "examples" / "mcp_profile_server.py"
TOOLS = {"list_providers", "list_connections", "connect", "call_api", "disconnect"}
WAIT = 30.0  # seconds for a notification or a server start on a loaded machine

# Prints, for each connection id read on stdin, its stored tokens as one JSON line.
READ_TOKENS = """
import json, os, sys
from broker_app.crypto import KeyRing, parse_keys
from broker_app.models import Connection
ring = KeyRing(parse_keys(os.environ["TOKEN_ENCRYPTION_KEYS"]))
print("ready", flush=True)
for line in sys.stdin:
    cid = line.strip()
    row = Connection.objects.get(id=cid)
    out = {}
    for name in ("access_token", "refresh_token", "id_token"):
        blob = getattr(row, name + "_enc")
        out[name] = ring.decrypt(blob, aad=f"{cid}:{name}") if blob else ""
    print(json.dumps(out), flush=True)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Live:
    gateway_url: str
    api_key: str
    provider: str
    return_url: str
    consent_cmd: str
    broker_url: str
    tokens: subprocess.Popen[str]
    narrow: subprocess.Popen[str]
    dromos: DromosClient
    secrets: list[tuple[str, str]] = field(default_factory=list)  # every test's

    def stored_tokens(self, connection_id: str) -> dict[str, str]:
        """The connection's tokens as the broker stores them (decrypted), to look for."""
        assert self.tokens.stdin and self.tokens.stdout
        self.tokens.stdin.write(connection_id + "\n")
        self.tokens.stdin.flush()
        while (line := self.tokens.stdout.readline()) and not line.startswith("{"):
            pass
        assert line, "the token reader exited"
        tokens: dict[str, str] = json.loads(line)
        return tokens

    def narrow_key(self) -> str:
        """An API key of another workspace whose proxy policy allows only GET /me and
        GET /.well-known/* on the provider."""
        out, _ = self.narrow.communicate(timeout=120)
        assert self.narrow.returncode == 0, "apikey create failed"
        return out.strip().splitlines()[-1]

    def remember(self, name: str, value: str) -> None:
        assert value and len(value) >= 8, f"{name} is empty: nothing to look for"
        self.secrets.append((name, value))


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    gateway_url = os.environ.get("DROMOS_GATEWAY_URL")
    if not gateway_url:
        pytest.skip("DROMOS_GATEWAY_URL is not set: no live gateway for the MCP end-to-end test")
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        pytest.fail(f"DROMOS_GATEWAY_URL is set but {', '.join(missing)} is not")
    # Django boots for seconds: start the token reader now, it is needed later.
    reader = subprocess.Popen(
        [*shlex.split(os.environ["DROMOS_E2E_MANAGE_CMD"]), "broker", "shell", "-c", READ_TOKENS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    provider = os.environ["DROMOS_E2E_PROVIDER"]
    narrow = subprocess.Popen(
        [
            *shlex.split(os.environ["DROMOS_E2E_MANAGE_CMD"]),
            *("gateway", "apikey", "create", "--name", "mcp-e2e-narrow"),
            *("--workspace", f"mcp-e2e-{uuid.uuid4().hex[:8]}"),
            *("--allow", f"{provider} GET /me", "--allow", f"{provider} GET /.well-known/*"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    dromos = DromosClient(gateway_url, api_key=os.environ["DROMOS_API_KEY"])
    try:
        yield Live(
            gateway_url=gateway_url,
            api_key=os.environ["DROMOS_API_KEY"],
            provider=provider,
            return_url=os.environ["DROMOS_E2E_RETURN_URL"],
            consent_cmd=os.environ["DROMOS_E2E_CONSENT_CMD"],
            broker_url=os.environ["DROMOS_BROKER_URL"].rstrip("/"),
            tokens=reader,
            narrow=narrow,
            dromos=dromos,
        )
    finally:
        dromos.close()
        if reader.stdin:
            reader.stdin.close()
        try:
            reader.wait(10)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait()
        if reader.stdout:
            reader.stdout.close()
        if narrow.poll() is None:
            narrow.kill()
        narrow.communicate()


# -- the user's browser ------------------------------------------------------------------


def consent(live: Live, url: str, login: str, *, deny: bool = False) -> str | None:
    """Log in as ``login`` at the provider and approve (or cancel) at the consent URL, as a
    browser does. Returns the authorization code the browser carried to the broker."""
    command = [*shlex.split(live.consent_cmd), url, "--login", login]
    if deny:
        command.append("--deny")
    else:
        command += ["--stop-at", f"{live.broker_url}/auth/callback"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"consent failed: {done.stderr[-2000:]}"
    if deny:
        assert "access_denied" in done.stdout or "status=error" in done.stdout, done.stdout
        return None
    callback = done.stdout.strip().splitlines()[-1]
    (code,) = parse_qs(urlsplit(callback).query)["code"]
    landed = httpx.get(callback, follow_redirects=False, timeout=30)
    assert landed.status_code in (302, 303), landed.text[:500]
    assert "status=success" in landed.headers["location"]
    return code


async def consent_async(live: Live, url: str, login: str, *, deny: bool = False) -> str | None:
    return await anyio.to_thread.run_sync(lambda: consent(live, url, login, deny=deny))


# -- an MCP client that records every JSON-RPC message -----------------------------------


@dataclass
class Session:
    client: Any
    wire: list[str]  # every JSON-RPC message as sent: "-> …" client to server, "<- …" back
    notices: list[Any]

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        return await self.client.call_tool(tool, args)

    async def elicitation(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """Call ``tool``, expecting the URL elicitation (-32042); its one elicitation."""
        with pytest.raises(MCPError) as raised:
            await self.call(tool, args)
        assert raised.value.code == -32042, raised.value
        (elicitation,) = raised.value.data["elicitations"]
        assert elicitation["mode"] == "url" and elicitation["url"].startswith("http")
        return dict(elicitation)

    async def completed(self, elicitation_id: str) -> None:
        """Wait for notifications/elicitation/complete for ``elicitation_id``."""
        with anyio.fail_after(WAIT):
            while elicitation_id not in [  # noqa: ASYNC110 (polling a plain list)
                n.params.elicitation_id
                for n in self.notices
                if isinstance(n, ElicitCompleteNotification)
            ]:
                await anyio.sleep(0.05)


@asynccontextmanager
async def recorded(transport: Any, wire: list[str]) -> AsyncIterator[Any]:
    """``transport`` with every JSON-RPC message in both directions appended to ``wire``,
    serialized exactly as the transport sends it."""
    async with transport as (read, write):
        to_client, client_reads = anyio.create_memory_object_stream[SessionMessage | Exception](100)
        client_writes, from_client = anyio.create_memory_object_stream[SessionMessage](100)

        async def inbound() -> None:
            async with to_client:
                async for item in read:
                    if isinstance(item, SessionMessage):
                        wire.append("<- " + item.message.model_dump_json(by_alias=True))
                    await to_client.send(item)

        async def outbound() -> None:
            async with from_client:
                async for item in from_client:
                    wire.append("-> " + item.message.model_dump_json(by_alias=True))
                    await write.send(item)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(inbound)
            tasks.start_soon(outbound)
            try:
                yield client_reads, client_writes
            finally:
                tasks.cancel_scope.cancel()


@asynccontextmanager
async def mcp_client(transport: Any) -> AsyncIterator[Session]:
    wire: list[str] = []
    notices: list[Any] = []

    async def on_message(message: Any) -> None:
        notices.append(message)

    async def on_elicit(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept")

    async with Client(
        recorded(transport, wire),
        mode="legacy",
        message_handler=on_message,
        elicitation_callback=on_elicit,
    ) as client:
        yield Session(client, wire, notices)


def server_env(
    live: Live, state_file: Path, api_key: str | None = None, **extra: str
) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "DROMOS_GATEWAY_URL": live.gateway_url,
        "DROMOS_API_KEY": api_key or live.api_key,
        "DROMOS_RETURN_URL": live.return_url,
        "DROMOS_MCP_STATE_FILE": str(state_file),
        **extra,
    }


def dromos_mcp() -> str:
    command = shutil.which("dromos-mcp", path=str(Path(sys.executable).parent))
    assert command, "dromos-mcp console script not installed in this environment"
    return command


@asynccontextmanager
async def stdio_server(
    live: Live, user_id: str, state_file: Path, errlog: TextIO, *, example: bool = False
) -> AsyncIterator[Session]:
    if example:  # the @requires_connection example, on the local provider's userinfo
        command, args = sys.executable, [str(EXAMPLE)]
        env = server_env(
            live,
            state_file,
            DROMOS_USER_ID=user_id,
            DROMOS_EXAMPLE_PROVIDER=live.provider,
            DROMOS_EXAMPLE_PROFILE_PATH="/me",
        )
    else:
        command = dromos_mcp()
        args = ["--transport", "stdio", "--user-id", user_id, "--poll-interval", "0.2"]
        env = server_env(live, state_file)
    params = StdioServerParameters(command=command, args=args, env=env)
    async with mcp_client(stdio_client(params, errlog=errlog)) as session:
        yield session


def assert_no_secret(live: Live, where: str, text: str) -> None:
    names = {name for name, _ in live.secrets}
    assert names >= {"access_token", "refresh_token", "id_token", "code", "api_key"}, names
    for name, value in live.secrets:
        for form in {value, quote(value, safe=""), json.dumps(value)[1:-1]}:
            assert form not in text, f"the {name} appears in {where}"


def remember_secrets(live: Live, connection_id: str, code: str | None) -> None:
    assert code
    live.remember("code", code)
    live.remember("api_key", live.api_key)
    for name, value in live.stored_tokens(connection_id).items():
        live.remember(name, value)


def userinfo_args(live: Live) -> dict[str, Any]:
    return {"provider": live.provider, "method": "GET", "path": "/me"}


def new_user(kind: str) -> str:
    return f"mcp-{kind}-{uuid.uuid4().hex[:10]}"


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stdio_session_connects_calls_lists_and_disconnects(
    live: Live, tmp_path: Path
) -> None:
    user, login = new_user("stdio"), "mcp-ada"
    state = tmp_path / "state" / "pending.json"
    # Another user's connection, approved: it is not this user's.
    others = live.dromos.request_connection(
        new_user("other"), live.provider, ["openid"], live.return_url
    )
    await consent_async(live, others.auth_url, "mcp-someone-else")
    with (tmp_path / "stderr.log").open("w+") as errlog:
        async with stdio_server(live, user, state, errlog) as s:
            tools = (await s.client.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            listed = (await s.call("list_providers", {})).structured_content["providers"]
            assert live.provider in [p["name"] for p in listed]

            # Bad inputs answer tool errors naming the field; nothing is started.
            bad = await s.call("call_api", {"provider": live.provider, "path": "/me"})
            assert bad.is_error and "method" in bad.content[0].text
            bad = await s.call("connect", {"provider": "no-such-provider"})
            assert bad.is_error and "provider: unknown provider 'no-such-provider'" in (
                bad.content[0].text
            )
            for tool, args in [
                ("call_api", {"connection_id": others.connection_id, "method": "GET", "path": "/"}),
                ("disconnect", {"connection_id": others.connection_id}),
            ]:
                bad = await s.call(tool, args)
                assert bad.is_error and "not found" in bad.content[0].text
            assert live.dromos.check_connection(others.connection_id).status == "active"

            # No connection of this user's: call_api elicits; the user consents; the client
            # is told.
            elicitation = await s.elicitation("call_api", userinfo_args(live))
            code = await consent_async(live, elicitation["url"], login)
            await s.completed(elicitation["elicitationId"])
            answer = await s.call("call_api", userinfo_args(live))
            assert not answer.is_error, answer.content
            result = answer.structured_content
            assert result["status"] == 200 and result["body"]["sub"] == login
            connection_id = result["connection_id"]
            assert elicitation["elicitationId"] == f"dromos-{connection_id}"
            remember_secrets(live, connection_id, code)

            listed = (await s.call("list_connections", {})).structured_content["connections"]
            assert [(c["connection_id"], c["status"]) for c in listed] == [
                (connection_id, "active")
            ]
            connected = await s.call("connect", {"provider": live.provider})
            assert connected.structured_content["status"] == "connected"
            assert connected.structured_content["connection"]["connection_id"] == connection_id
            gone = await s.call("disconnect", {"connection_id": connection_id})
            assert gone.structured_content["connection"]["status"] == "revoked"
            listed = await s.call("list_connections", {"status": "active"})
            assert listed.structured_content["connections"] == []
        errlog.seek(0)
        stderr = errlog.read()
    assert live.dromos.check_connection(connection_id).status == "revoked"
    # The recording holds the whole conversation: the consent link, the provider's answer.
    assert any(m.startswith("<- ") and elicitation["url"] in m for m in s.wire)
    assert any(m.startswith("<- ") and f'"sub":"{login}"' in m for m in s.wire)
    assert any(m.startswith("-> ") and '"tools/call"' in m for m in s.wire)
    assert any('"notifications/elicitation/complete"' in m for m in s.wire)
    assert_no_secret(live, "the JSON-RPC messages", "\n".join(s.wire))
    assert_no_secret(live, "the server's stderr", stderr)
    assert_no_secret(live, "the state file", state.read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.anyio
async def test_streamable_http_session_in_a_narrow_workspace(live: Live, tmp_path: Path) -> None:
    """Another workspace's key with a proxy policy: the first workspace's connections are
    not found; consent denied, then approved; a path outside the policy is refused; a
    large answer is truncated."""
    user = new_user("http")
    key = live.narrow_key()
    live.remember("api_key", key)
    theirs = live.dromos.request_connection(
        new_user("other"), live.provider, ["openid"], live.return_url
    ).connection_id  # in the first workspace

    port = free_port()
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as errlog:
        process = subprocess.Popen(  # noqa: ASYNC220 (the server for the whole test)
            [
                *(dromos_mcp(), "--transport", "http", "--port", str(port)),
                *("--user-id", user, "--poll-interval", "0.2", "--max-result-bytes", "1000"),
            ],
            env=server_env(live, tmp_path / "pending.json", api_key=key),
            stdout=errlog,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(WAIT):
                while True:
                    assert process.poll() is None, stderr.read_text()
                    try:
                        await http.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.1)
        async with mcp_client(streamable_http_client(f"http://127.0.0.1:{port}/mcp")) as s:
            assert {t.name for t in (await s.client.list_tools()).tools} == TOOLS
            for tool, args in [
                ("call_api", {"connection_id": theirs, "method": "GET", "path": "/me"}),
                ("disconnect", {"connection_id": theirs}),
            ]:
                bad = await s.call(tool, args)
                assert bad.is_error and "not found" in bad.content[0].text

            # The user cancels at the provider: told once, no new consent on its own.
            denied = await s.elicitation("call_api", userinfo_args(live))
            await consent_async(live, denied["url"], "mcp-bea", deny=True)
            await s.completed(denied["elicitationId"])
            answer = await s.call("call_api", userinfo_args(live))
            assert answer.is_error and "did not grant access" in answer.content[0].text
            listed = await s.call("list_connections", {})
            assert [c["status"] for c in listed.structured_content["connections"]] == ["failed"]

            # Asked again (the user agreed to retry): a new link, approved this time.
            elicitation = await s.elicitation("call_api", userinfo_args(live))
            assert elicitation["elicitationId"] != denied["elicitationId"]
            code = await consent_async(live, elicitation["url"], "mcp-bea")
            await s.completed(elicitation["elicitationId"])
            answer = await s.call("call_api", userinfo_args(live))
            assert not answer.is_error, answer.content
            assert answer.structured_content["body"]["sub"] == "mcp-bea"
            connection_id = answer.structured_content["connection_id"]
            remember_secrets(live, connection_id, code)

            # Outside the key's proxy policy: refused, naming the missing rule.
            refused = await s.call("call_api", {**userinfo_args(live), "path": "/jwks"})
            assert refused.is_error
            assert "proxy policy" in refused.content[0].text
            assert "no rule allows <provider> GET /jwks" in refused.content[0].text
            # Allowed but large (the discovery document): cut at 1000 bytes, marked.
            big = await s.call(
                "call_api", {**userinfo_args(live), "path": "/.well-known/openid-configuration"}
            )
            data = big.structured_content
            assert data["truncated"] is True and data["bytes"] > 1000
            assert data["body"].endswith(f"[truncated: showing 1000 of {data['bytes']} bytes]")

            gone = await s.call("disconnect", {"connection_id": connection_id})
            assert gone.structured_content["connection"]["status"] == "revoked"
    finally:
        process.terminate()
        process.wait(10)
    assert live.dromos.check_connection(theirs).status == "pending"
    assert sum('"notifications/elicitation/complete"' in m for m in s.wire) == 2
    assert any(m.startswith("<- ") and '"sub":"mcp-bea"' in m for m in s.wire)
    assert_no_secret(live, "the JSON-RPC messages", "\n".join(s.wire))
    assert_no_secret(live, "the server's output", stderr.read_text())


@pytest.mark.anyio
async def test_a_pending_consent_survives_a_restart(live: Live, tmp_path: Path) -> None:
    user, login = new_user("restart"), "mcp-cleo"
    state = tmp_path / "pending.json"
    errlog = (tmp_path / "stderr.log").open("w+")
    with errlog:
        async with stdio_server(live, user, state, errlog) as first:
            elicitation = await first.elicitation("connect", {"provider": live.provider})
        assert state.stat().st_mode & 0o777 == 0o600
        # The server process is gone; a new one (same state file) shows the same link, for
        # call_api as for connect (the same user, provider and scopes).
        async with stdio_server(live, user, state, errlog) as second:
            assert await second.elicitation("call_api", userinfo_args(live)) == elicitation
            page = live.dromos.list_connections(user_id=user)
            assert [c.status for c in page.results] == ["pending"]
            code = await consent_async(live, elicitation["url"], login)
            await second.completed(elicitation["elicitationId"])
            answer = await second.call("call_api", userinfo_args(live))
            assert answer.structured_content["body"]["sub"] == login
            listed = await second.call("list_connections", {})
            (connection,) = listed.structured_content["connections"]
            assert connection["status"] == "active"
            assert elicitation["elicitationId"] == f"dromos-{connection['connection_id']}"
            remember_secrets(live, connection["connection_id"], code)
        assert json.loads(state.read_text())["pending"] == []
        errlog.seek(0)
        stderr = errlog.read()
    for session in (first, second):
        assert_no_secret(live, "the JSON-RPC messages", "\n".join(session.wire))
    assert_no_secret(live, "the servers' stderr", stderr)
    live.dromos.delete_connection(connection["connection_id"])


@pytest.mark.anyio
async def test_requires_connection_through_the_example_server(live: Live, tmp_path: Path) -> None:
    user, login = new_user("example"), "mcp-dan"
    with (tmp_path / "stderr.log").open("w+") as errlog:
        async with stdio_server(live, user, tmp_path / "p.json", errlog, example=True) as s:
            elicitation = await s.elicitation("my_profile", {})
            code = await consent_async(live, elicitation["url"], login)
            await s.completed(elicitation["elicitationId"])
            answer = await s.call("my_profile", {})
            assert not answer.is_error, answer.content
            assert answer.structured_content["profile"]["sub"] == login
            answer = await s.call("my_profile_sync", {"field": "sub"})
            assert answer.structured_content["profile"] == {"sub": login}
            (connection,) = live.dromos.list_connections(user_id=user).results
            remember_secrets(live, connection.connection_id, code)
        errlog.seek(0)
        stderr = errlog.read()
    assert_no_secret(live, "the JSON-RPC messages", "\n".join(s.wire))
    assert_no_secret(live, "the server's stderr", stderr)
    live.dromos.delete_connection(connection.connection_id)
