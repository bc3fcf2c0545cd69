"""dromos_sdk.mcp through the official `mcp` client (JSON-RPC over in-memory streams,
protocol 2025-11-25) against a stateful fake gateway."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")

from mcp.shared.exceptions import MCPError
from mcp.types import ElicitCompleteNotification

from dromos_sdk.mcp import Gate, GateConfig, build_server

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

from mcp_support import (
    BASE_URL,
    SECRET_TOKEN,
    FakeGateway,
    fake_client,
    fake_sync_client,
    mcp_session,
)

SNAPSHOT = Path(__file__).parent / "snapshots" / "mcp_tools.json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def make_gate(gateway: FakeGateway, user_id: str = "alice", **kw: Any) -> Gate:
    config = GateConfig(
        gateway_url=BASE_URL,
        api_key="dk_test",
        user_id=user_id,
        return_url="https://app.example.test/done",
        poll_interval=0.02,
        **kw,
    )
    return Gate(config, client=fake_client(gateway), sync_client=fake_sync_client(gateway))


@pytest.fixture
async def session(gateway: FakeGateway) -> AsyncIterator[Any]:
    async with mcp_session(build_server(make_gate(gateway))) as s:
        yield s


def completions(messages: list[Any]) -> list[str]:
    return [m.params.elicitation_id for m in messages if isinstance(m, ElicitCompleteNotification)]


async def wait_for(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 (polling a plain list)
            await anyio.sleep(0.01)


async def call(session: Any, tool: str, args: dict[str, Any]) -> Any:
    return await session.client.call_tool(tool, args)


def text(result: Any) -> str:
    return "".join(c.text for c in result.content)


USERINFO = {"provider": "oidc", "method": "GET", "path": "/userinfo"}


@pytest.mark.anyio
async def test_call_api_elicits_then_completes_then_answers(
    session: Any, gateway: FakeGateway
) -> None:
    with pytest.raises(MCPError) as raised:
        await call(session, "call_api", USERINFO)
    assert raised.value.code == -32042
    (elicitation,) = raised.value.data["elicitations"]
    assert elicitation["mode"] == "url"
    assert elicitation["url"].startswith("https://idp.example.test/auth")
    (cid,) = gateway.connections
    assert gateway.proxied == []

    # Asked again while pending: the same consent, no second connection.
    with pytest.raises(MCPError) as again:
        await call(session, "call_api", USERINFO)
    assert again.value.data["elicitations"][0]["elicitationId"] == elicitation["elicitationId"]
    assert len(gateway.connections) == 1

    gateway.consent(cid)
    await wait_for(lambda: elicitation["elicitationId"] in completions(session.messages))

    result = await call(session, "call_api", USERINFO)
    assert not result.is_error
    assert result.structured_content["body"] == {"sub": "alice"}
    assert result.structured_content["status"] == 200


@pytest.mark.anyio
async def test_client_without_url_elicitation_gets_the_url_in_a_result(
    gateway: FakeGateway,
) -> None:
    async with mcp_session(build_server(make_gate(gateway)), url_elicitation=False) as s:
        result = await call(s, "call_api", USERINFO)
    assert not result.is_error
    data = result.structured_content
    assert data["status"] == "authorization_required"
    assert data["url"].startswith("https://idp.example.test/auth")
    assert "open it" in data["instructions"]


@pytest.mark.anyio
async def test_connect_returns_the_active_connection(session: Any, gateway: FakeGateway) -> None:
    cid = gateway.add("alice")
    result = await call(session, "connect", {"provider": "oidc"})
    assert result.structured_content["connection"]["connection_id"] == cid
    listed = await call(session, "list_connections", {})
    assert [c["connection_id"] for c in listed.structured_content["connections"]] == [cid]


@pytest.mark.anyio
async def test_unknown_provider_is_a_tool_error_naming_the_field(session: Any) -> None:
    result = await call(session, "connect", {"provider": "nope"})
    assert result.is_error
    assert "provider: unknown provider 'nope'" in text(result)
    assert "github" in text(result)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"provider": "oidc", "method": "GET", "path": 5}, "path"),
        ({"provider": "oidc", "method": "TRACE", "path": "/x"}, "method"),
        ({"provider": "oidc", "method": "GET", "path": "x"}, "path"),
        ({"provider": "oidc", "method": "GET", "path": "/x", "query": {"a": 1}}, "query"),
    ],
)
async def test_schema_failures_name_the_field(
    session: Any, args: dict[str, Any], field: str
) -> None:
    result = await call(session, "call_api", args)
    assert result.is_error
    assert f"\n{field}" in text(result)


@pytest.mark.anyio
async def test_provider_xor_connection_id(session: Any) -> None:
    result = await call(session, "call_api", {"method": "GET", "path": "/userinfo"})
    assert result.is_error and "provider, connection_id" in text(result)


@pytest.mark.anyio
async def test_another_users_connection_is_not_found(session: Any, gateway: FakeGateway) -> None:
    bobs = gateway.add("bob")
    for cid in (bobs, "c_missing"):
        args = {"connection_id": cid, "method": "GET", "path": "/userinfo"}
        result = await call(session, "call_api", args)
        assert result.is_error and "not found" in text(result)
        result = await call(session, "disconnect", {"connection_id": cid})
        assert result.is_error and "not found" in text(result)
    assert gateway.proxied == []
    assert gateway.connections[bobs]["status"] == "active"


@pytest.mark.anyio
async def test_consent_by_another_user_does_not_connect_the_asker(
    session: Any, gateway: FakeGateway
) -> None:
    gateway.add("bob")  # bob has consented: his connection is his
    with pytest.raises(MCPError) as raised:
        await call(session, "call_api", USERINFO)
    assert raised.value.code == -32042


@pytest.mark.anyio
async def test_policy_forbidden_names_the_rule_and_calls_nothing(
    session: Any, gateway: FakeGateway
) -> None:
    gateway.add("alice")
    result = await call(session, "call_api", {**USERINFO, "path": "/admin/users"})
    assert result.is_error
    assert "proxy policy" in text(result) and "oidc GET /admin/users" in text(result)
    assert gateway.proxied == []


@pytest.mark.anyio
async def test_denied_consent_completes_and_does_not_loop(
    session: Any, gateway: FakeGateway
) -> None:
    with pytest.raises(MCPError) as raised:
        await call(session, "call_api", USERINFO)
    elicitation_id = raised.value.data["elicitations"][0]["elicitationId"]
    (cid,) = gateway.connections
    gateway.consent(cid, deny=True)
    await wait_for(lambda: elicitation_id in completions(session.messages))
    result = await call(session, "call_api", USERINFO)
    assert result.is_error
    assert "did not grant access" in text(result) and "access_denied" in text(result)
    assert len(gateway.connections) == 1  # no new consent started on its own


@pytest.mark.anyio
async def test_gateway_down_is_a_tool_error_and_the_server_keeps_running(
    session: Any, gateway: FakeGateway
) -> None:
    gateway.add("alice")
    gateway.down = True
    result = await call(session, "call_api", USERINFO)
    assert result.is_error and "cannot be reached" in text(result)
    gateway.down = False
    result = await call(session, "call_api", USERINFO)
    assert not result.is_error and result.structured_content["body"] == {"sub": "alice"}


@pytest.mark.anyio
async def test_large_answers_are_truncated_with_the_byte_count(gateway: FakeGateway) -> None:
    gateway.add("alice")
    async with mcp_session(build_server(make_gate(gateway, max_result_bytes=1000))) as s:
        result = await call(s, "call_api", {**USERINFO, "path": "/big"})
    data = result.structured_content
    assert data["bytes"] == 200_000 and data["truncated"] is True
    assert data["body"].endswith("[truncated: showing 1000 of 200000 bytes]")
    assert len(text(result)) < 5000


@pytest.mark.anyio
async def test_binary_answers_are_described(session: Any, gateway: FakeGateway) -> None:
    gateway.add("alice")
    result = await call(session, "call_api", {**USERINFO, "path": "/binary"})
    body = result.structured_content["body"]
    assert body.startswith("[binary body: 5006 bytes of image/png, sha256 ")
    assert "PNG" not in body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "expected"),
    [("/limited", "wait 30 s (Retry-After)"), ("/down", "provider is failing (HTTP 503)")],
)
async def test_provider_failures_are_actionable(
    session: Any, gateway: FakeGateway, path: str, expected: str
) -> None:
    gateway.add("alice")
    result = await call(session, "call_api", {**USERINFO, "path": path})
    assert result.is_error and expected in text(result)


@pytest.mark.anyio
async def test_disconnect(session: Any, gateway: FakeGateway) -> None:
    cid = gateway.add("alice")
    result = await call(session, "disconnect", {"connection_id": cid})
    assert result.structured_content["connection"]["status"] == "revoked"


@pytest.mark.anyio
async def test_tool_descriptions_and_schemas_snapshot(session: Any) -> None:
    tools = (await session.client.list_tools()).tools
    current = {
        t.name: {
            "description": t.description,
            "input_schema": t.input_schema,
            "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True)
            if t.annotations
            else None,
        }
        for t in tools
    }
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "tool descriptions/schemas changed: if deliberate, rerun with UPDATE_SNAPSHOTS=1"
    )


# -- @requires_connection, through the example server ----------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("tool", ["my_profile", "my_profile_sync"])
async def test_example_server_decorator(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    monkeypatch.setenv("DROMOS_EXAMPLE_PROVIDER", "oidc")
    monkeypatch.setenv("DROMOS_EXAMPLE_PROFILE_PATH", "/userinfo")
    sys.modules.pop("mcp_profile_server", None)
    import mcp_profile_server  # type: ignore[import-not-found]

    async with mcp_session(mcp_profile_server.build(make_gate(gateway))) as s:
        schemas = {t.name: t.input_schema for t in (await s.client.list_tools()).tools}
        assert "api" not in json.dumps(schemas[tool]) and "ctx" not in json.dumps(schemas[tool])
        with pytest.raises(MCPError) as raised:
            await call(s, tool, {})
        assert raised.value.code == -32042
        elicitation_id = raised.value.data["elicitations"][0]["elicitationId"]
        gateway.consent(next(iter(gateway.connections)))
        await wait_for(lambda: elicitation_id in completions(s.messages))
        result = await call(s, tool, {})
    assert not result.is_error
    assert result.structured_content["profile"] == {"sub": "alice"}


# -- pending consents survive a restart (state file) -----------------------------------------


@asynccontextmanager
async def server_process(gateway: FakeGateway, state_file: str) -> AsyncIterator[Any]:
    """One server "process": its gate's background polls end with it, as on a restart."""
    gate = make_gate(gateway, state_file=state_file)
    try:
        async with mcp_session(build_server(gate)) as s:
            yield s
    finally:
        await gate.aclose()


@pytest.mark.anyio
async def test_a_restarted_server_shows_the_same_consent_and_completes_it(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "pending.json"
    async with server_process(gateway, str(state)) as s:
        with pytest.raises(MCPError) as first:
            await call(s, "call_api", USERINFO)
    (elicitation,) = first.value.data["elicitations"]
    assert state.stat().st_mode & 0o777 == 0o600
    assert state.parent.stat().st_mode & 0o777 == 0o700
    saved = state.read_text()
    assert elicitation["url"] in saved and "dk_test" not in saved
    assert SECRET_TOKEN not in saved

    # A new process (gate) with the same file: the same link and elicitation, no new consent.
    async with server_process(gateway, str(state)) as s:
        with pytest.raises(MCPError) as again:
            await call(s, "call_api", USERINFO)
        assert again.value.data["elicitations"] == [elicitation]
        assert len(gateway.connections) == 1
        gateway.consent(next(iter(gateway.connections)))
        await wait_for(lambda: elicitation["elicitationId"] in completions(s.messages))
        result = await call(s, "call_api", USERINFO)
        assert result.structured_content["body"] == {"sub": "alice"}
        listed = await call(s, "list_connections", {})
        assert [c["status"] for c in listed.structured_content["connections"]] == ["active"]
    assert json.loads(state.read_text())["pending"] == []


@pytest.mark.anyio
async def test_consent_answered_while_the_server_was_down(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    state = tmp_path / "pending.json"
    async with server_process(gateway, str(state)) as s:
        with pytest.raises(MCPError):
            await call(s, "call_api", USERINFO)
    (cid,) = gateway.connections
    gateway.consent(cid, deny=True)
    async with server_process(gateway, str(state)) as s:
        result = await call(s, "call_api", USERINFO)
        assert result.is_error and "did not grant access" in text(result)
        assert len(gateway.connections) == 1  # said once, no new consent on its own
        with pytest.raises(MCPError) as asked:  # the next call asks again
            await call(s, "call_api", USERINFO)
    assert asked.value.code == -32042
    assert len(gateway.connections) == 2
    # Approved while down: the next server just uses the connection.
    gateway.consent(list(gateway.connections)[1])
    async with server_process(gateway, str(state)) as s:
        result = await call(s, "call_api", USERINFO)
    assert result.structured_content["body"] == {"sub": "alice"}
    assert json.loads(state.read_text())["pending"] == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 99, "pending": [1]}',
        '{"version": 1, "pending": 5}',
        '{"version": 1, "pending": [1, {"created_at": "soon"}]}',
    ],
)
async def test_an_unreadable_state_file_is_ignored(
    gateway: FakeGateway, tmp_path: Path, content: str
) -> None:
    state = tmp_path / "pending.json"
    state.write_text(content)
    async with server_process(gateway, str(state)) as s:
        with pytest.raises(MCPError) as raised:
            await call(s, "call_api", USERINFO)
    assert raised.value.code == -32042
    assert json.loads(state.read_text())["pending"][0]["connection_id"] in gateway.connections


@pytest.mark.anyio
async def test_an_unwritable_state_file_keeps_consents_in_memory(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    gate = make_gate(gateway, state_file=str(blocker / "pending.json"))  # parent is a file
    async with mcp_session(build_server(gate)) as s:
        with pytest.raises(MCPError) as first:
            await call(s, "call_api", USERINFO)
        with pytest.raises(MCPError) as again:
            await call(s, "call_api", USERINFO)
    assert first.value.data == again.value.data and len(gateway.connections) == 1


def test_state_file_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DROMOS_GATEWAY_URL", BASE_URL)
    monkeypatch.setenv("DROMOS_API_KEY", "dk_test")
    monkeypatch.setenv("DROMOS_USER_ID", "alice")
    monkeypatch.delenv("DROMOS_MCP_STATE_FILE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert GateConfig.from_env().state_file == str(tmp_path / "dromos-mcp" / "pending.json")
    monkeypatch.setenv("DROMOS_MCP_STATE_FILE", "/somewhere/p.json")
    assert GateConfig.from_env().state_file == "/somewhere/p.json"
    assert GateConfig.from_env(state_file="off").state_file is None


@pytest.mark.anyio
async def test_an_old_consent_link_is_replaced(gateway: FakeGateway, tmp_path: Path) -> None:
    """Past link_max_age (540 s: the broker's 600 s state lifetime ends an unused link) a
    new link is made instead of showing a dead one again, in memory and after a restart."""
    state = str(tmp_path / "pending.json")
    gate = make_gate(gateway, state_file=state, link_max_age=0.2)
    async with mcp_session(build_server(gate)) as s:
        with pytest.raises(MCPError) as first:
            await call(s, "call_api", USERINFO)
        with pytest.raises(MCPError) as fresh:
            await call(s, "call_api", USERINFO)
        assert fresh.value.data == first.value.data
        await anyio.sleep(0.3)
        with pytest.raises(MCPError) as later:
            await call(s, "call_api", USERINFO)
    await gate.aclose()
    assert later.value.data != first.value.data
    assert len(gateway.connections) == 2
    await anyio.sleep(0.3)
    restarted_gate = make_gate(gateway, state_file=state, link_max_age=0.2)
    async with mcp_session(build_server(restarted_gate)) as s:  # the saved link is too old
        with pytest.raises(MCPError) as restarted:
            await call(s, "call_api", USERINFO)
    await restarted_gate.aclose()
    assert restarted.value.data not in (first.value.data, later.value.data)
    assert len(gateway.connections) == 3
