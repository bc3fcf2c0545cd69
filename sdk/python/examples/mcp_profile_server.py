"""An MCP server of your own that uses @requires_connection (Dromos Python SDK).

    pip install 'dromos-sdk[mcp]'
    DROMOS_GATEWAY_URL=… DROMOS_API_KEY=… DROMOS_USER_ID=ada python mcp_profile_server.py

Its tools read the user's profile at a provider through the Dromos API proxy; the first
call asks the user to connect (URL elicitation), later calls just work. Set
DROMOS_EXAMPLE_PROVIDER / DROMOS_EXAMPLE_PROFILE_PATH for another provider than GitHub.
"""

from __future__ import annotations

import os
from typing import Any

from mcp.server.mcpserver import MCPServer

from dromos_sdk.mcp import ConnectionHTTP, Gate, SyncConnectionHTTP, requires_connection

PROVIDER = os.environ.get("DROMOS_EXAMPLE_PROVIDER", "github")
PROFILE_PATH = os.environ.get("DROMOS_EXAMPLE_PROFILE_PATH", "/user")


def build(gate: Gate | None = None) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("profile-example")

    @server.tool(description=f"The user's {PROVIDER} profile (asks to connect the first time).")
    @requires_connection(PROVIDER, gate=gate)
    async def my_profile(api: ConnectionHTTP) -> dict[str, Any]:
        response = await api.get(PROFILE_PATH)
        return {"status": response.status_code, "profile": response.json()}

    @server.tool(description="Same as my_profile, written as a plain (blocking) function.")
    @requires_connection(PROVIDER, gate=gate)
    def my_profile_sync(api: SyncConnectionHTTP, field: str | None = None) -> dict[str, Any]:
        profile = api.get(PROFILE_PATH).json()
        return {"profile": profile if field is None else {field: profile.get(field)}}

    return server


if __name__ == "__main__":
    build().run("stdio")
