"""MCP integration of the Dromos SDK (``pip install 'dromos-sdk[mcp]'``).

- ``dromos-mcp``: an MCP server with the tools list_providers, list_connections, connect,
  call_api and disconnect (see :mod:`dromos_sdk.mcp.server`);
- :func:`requires_connection`: a decorator for your own MCP tools that hands them an HTTP
  client for the user's connection (through the gateway's API proxy) or raises the URL
  elicitation that asks the user to connect.
"""

from ._gate import DEFAULT_MAX_RESULT_BYTES, Gate, GateConfig
from .decorator import ConnectionHTTP, SyncConnectionHTTP, requires_connection
from .server import build_server, main

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "ConnectionHTTP",
    "Gate",
    "GateConfig",
    "SyncConnectionHTTP",
    "build_server",
    "main",
    "requires_connection",
]
