"""The ``dromos-mcp`` server: five tools over the public gateway API (no database, no broker).

The end user is fixed per server process (``--user-id`` / ``DROMOS_USER_ID``), on both
transports: run one server per user, or put the HTTP transport behind your own
authenticating front end that starts one per user.
"""

from __future__ import annotations

import argparse
import logging
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from ..errors import ConnectionNotActiveError, DromosError
from ._gate import (
    ConsentRequired,
    Gate,
    GateConfig,
    bounded_answer,
    gateway_error_message,
    guarded,
    provider_failure,
    raise_consent,
)

INSTRUCTIONS = (
    "Dromos lets you call the user's accounts at OAuth providers (Google, GitHub, …) without "
    "ever seeing a token. Use call_api for provider API calls; when the user has not connected "
    "the provider yet, the call asks the user to open a consent link (URL elicitation) — retry "
    "once the user has approved."
)

Provider = Annotated[
    str,
    Field(
        description="Provider name as listed by list_providers (e.g. 'github', 'google').",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.-]+$",
    ),
]
Scopes = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[!#-\[\]-~]+$")]] | None,
    Field(
        description="OAuth scopes to request, one per item; omit for the provider's defaults.",
        max_length=100,
    ),
]
ConnectionId = Annotated[
    str | None,
    Field(
        description=(
            "A connection id from list_connections or connect (c_…). Give this or provider."
        ),
        max_length=100,
    ),
]


def _connection_view(connection: Any) -> dict[str, Any]:
    return {
        "connection_id": connection.connection_id,
        "provider": connection.provider_name,
        "status": connection.status,
        "scopes": list(connection.granted_scopes or connection.scopes),
        "account": dict(connection.account),
        "error": connection.error,
    }


def build_server(gate: Gate) -> MCPServer[Any]:
    """The MCP server with the five Dromos tools, bound to ``gate``."""

    server: MCPServer[Any] = MCPServer("dromos", instructions=INSTRUCTIONS, log_level="WARNING")
    user_id = gate.config.user_id
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(
        annotations=read_only,
        description=(
            "List the OAuth providers this Dromos deployment can connect (name, display name, "
            "default scopes). Use a name from here as `provider` in the other tools."
        ),
    )
    async def list_providers() -> dict[str, Any]:
        providers = await guarded(gate.dromos.list_providers())
        return {
            "providers": [
                {
                    "name": p.name,
                    "display_name": p.display_name,
                    "default_scopes": list(p.default_scopes),
                }
                for p in providers
            ]
        }

    @server.tool(
        annotations=read_only,
        description=(
            "List the current user's connections (one per provider account) with their status: "
            "active connections can be used by call_api; pending ones wait for the user's "
            "consent; failed or revoked ones need `connect` again. Never returns tokens."
        ),
    )
    async def list_connections(
        provider: Annotated[
            str | None, Field(description="Only this provider's connections.", max_length=100)
        ] = None,
        status: Annotated[
            Literal["pending", "active", "failed", "revoked"] | None,
            Field(description="Only connections with this status."),
        ] = None,
    ) -> dict[str, Any]:
        page = await guarded(
            gate.dromos.list_connections(
                user_id=user_id, provider_name=provider, status=status, page_size=100
            )
        )
        return {"connections": [_connection_view(c) for c in page.results if c.user_id == user_id]}

    @server.tool(
        description=(
            "Connect the user's account at a provider. Returns the connection when one is "
            "already active (with at least the requested scopes); otherwise asks the user to "
            "open a consent link (URL elicitation, or a result with the URL when your client "
            "cannot show one). After the user approves, call the tool you need again."
        ),
    )
    async def connect(provider: Provider, ctx: Context, scopes: Scopes = None) -> dict[str, Any]:
        try:
            connection = await gate.require(ctx.session, user_id, provider, scopes or ())
        except ConsentRequired as exc:
            return raise_consent(exc, ctx.session)
        return {"status": "connected", "connection": _connection_view(connection)}

    @server.tool(
        annotations=ToolAnnotations(destructive_hint=False, open_world_hint=True),
        description=(
            "Call the provider's HTTP API for the user through Dromos: Dromos adds the user's "
            "credential, so no token is needed or ever shown. Give `provider` (the user's active "
            "connection to it is used) or `connection_id`, the HTTP `method`, the API `path` "
            "(relative to the provider's API base URL, starting with /, e.g. /user or "
            "/gmail/v1/users/me/profile), optional `query` parameters and a JSON `body`. "
            "Returns the provider's status, content type, size and body (large bodies are "
            "truncated, binary ones described). When the user has not connected the provider, "
            "it asks the user to open a consent link; retry after they approve."
        ),
    )
    async def call_api(
        method: Annotated[
            Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            Field(description="The HTTP method."),
        ],
        path: Annotated[
            str,
            Field(
                description="API path starting with / (no scheme or host).",
                pattern=r"^/",
                max_length=4096,
            ),
        ],
        ctx: Context,
        provider: Annotated[
            str | None,
            Field(
                description="Provider name (see list_providers). Give this or connection_id.",
                max_length=100,
            ),
        ] = None,
        connection_id: ConnectionId = None,
        query: Annotated[
            dict[str, str] | None, Field(description="Query string parameters.")
        ] = None,
        body: Annotated[Any, Field(description="JSON request body (for POST, PUT, PATCH).")] = None,
    ) -> dict[str, Any]:
        if (provider is None) == (connection_id is None):
            raise ToolError("provider, connection_id: give exactly one of them")
        if connection_id is not None:
            connection = await gate.own_connection(user_id, connection_id)
            provider_name = connection.provider_name
            target: str | None = connection.connection_id if connection.status == "active" else None
        else:
            provider_name, target = provider or "", None
        try:
            if target is None:
                target = (await gate.require(ctx.session, user_id, provider_name)).connection_id
            try:
                response = await gate.dromos.proxy(
                    target, method, path, params=query, json=body, stream=True
                )
            except ConnectionNotActiveError:
                # Revoked or failed since we looked: reconnect (elicits) or use another.
                target = (await gate.require(ctx.session, user_id, provider_name)).connection_id
                response = await guarded(
                    gate.dromos.proxy(target, method, path, params=query, json=body, stream=True)
                )
            except DromosError as exc:
                raise ToolError(gateway_error_message(exc)) from None
        except ConsentRequired as exc:
            return raise_consent(exc, ctx.session)
        failure = provider_failure(response)
        if failure is not None:
            await response.aclose()
            raise ToolError(failure)
        result = await bounded_answer(response, gate.config.max_result_bytes)
        result["connection_id"] = target
        return result

    @server.tool(
        annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True),
        description=(
            "Disconnect one of the user's connections: Dromos revokes it at the provider where "
            "possible and deletes its tokens. Only do this when the user asks."
        ),
    )
    async def disconnect(
        connection_id: Annotated[
            str,
            Field(
                description="The connection id to disconnect (see list_connections).",
                max_length=100,
            ),
        ],
    ) -> dict[str, Any]:
        await gate.own_connection(user_id, connection_id)
        connection = await guarded(gate.dromos.delete_connection(connection_id))
        return {"status": "disconnected", "connection": _connection_view(connection)}

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dromos-mcp",
        description="MCP server for Dromos: connect accounts and call provider APIs "
        "without tokens in the conversation. Configured by DROMOS_GATEWAY_URL, "
        "DROMOS_API_KEY, DROMOS_USER_ID (or --user-id), DROMOS_RETURN_URL and "
        "DROMOS_MCP_STATE_FILE.",
    )
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP transport: bind address")
    parser.add_argument("--port", type=int, default=8765, help="HTTP transport: port")
    parser.add_argument("--user-id", help="the end user's id (default: DROMOS_USER_ID)")
    parser.add_argument("--return-url", help="where the browser lands after consent")
    parser.add_argument(
        "--max-result-bytes", type=int, help="truncate API answers past this many bytes (65536)"
    )
    parser.add_argument(
        "--poll-interval", type=float, help="seconds between consent checks (default 1)"
    )
    parser.add_argument(
        "--state-file",
        help="where pending consents survive a restart (default: DROMOS_MCP_STATE_FILE or "
        "$XDG_STATE_HOME/dromos-mcp/pending.json; 'off': memory only). Never holds a token.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = GateConfig.from_env(
        user_id=args.user_id,
        return_url=args.return_url,
        max_result_bytes=args.max_result_bytes,
        poll_interval=args.poll_interval,
        state_file=args.state_file,
    )
    server = build_server(Gate(config))
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
