"""``@requires_connection``: for people who write their own MCP servers.

    server = MCPServer("my-tools")

    @server.tool()
    @requires_connection("github", scopes=["repo"])
    async def my_repos(api: ConnectionHTTP, per_page: int = 10) -> dict:
        response = await api.get("/user/repos", params={"per_page": str(per_page)})
        return {"repos": [r["full_name"] for r in response.json()]}

The decorated tool receives ``api`` — an HTTP client bound to the user's active connection
that sends every call through the gateway's API proxy (the token never enters the process)
— or, when the user has not connected the provider, the tool call answers with the URL
elicitation (-32042) and ``notifications/elicitation/complete`` follows the consent. A
plain (sync) function gets a :class:`SyncConnectionHTTP` and runs in a worker thread.

The gate (gateway, API key, user id) defaults to :meth:`GateConfig.from_env`
(``DROMOS_GATEWAY_URL``, ``DROMOS_API_KEY``, ``DROMOS_USER_ID``, ``DROMOS_RETURN_URL``).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import httpx
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from .._sync import DromosClient
from ..errors import DromosError
from ._gate import ConsentRequired, Gate, GateConfig, gateway_error_message, raise_consent


class ConnectionHTTP:
    """Async HTTP client for one connection, through ``/v1/proxy``. Paths are the provider
    API's (``/user``); answers are the provider's ``httpx.Response`` whatever its status;
    the gateway's own refusals raise ToolError with an actionable message."""

    def __init__(self, gate: Gate, connection_id: str, provider: str) -> None:
        self._gate = gate
        self.connection_id = connection_id
        self.provider = provider

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return await self._gate.dromos.proxy(
                self.connection_id, method, path, params=params, json=json, headers=headers
            )
        except DromosError as exc:
            raise ToolError(gateway_error_message(exc)) from None

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)


class SyncConnectionHTTP:
    """The blocking twin of :class:`ConnectionHTTP`, for plain ``def`` tools."""

    def __init__(self, client: DromosClient, connection_id: str, provider: str) -> None:
        self._client = client
        self.connection_id = connection_id
        self.provider = provider

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return self._client.proxy(
                self.connection_id, method, path, params=params, json=json, headers=headers
            )
        except DromosError as exc:
            raise ToolError(gateway_error_message(exc)) from None

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


_default: dict[str, Any] = {}


def default_gate() -> Gate:
    if "gate" not in _default:
        _default["gate"] = Gate(GateConfig.from_env())
    gate: Gate = _default["gate"]
    return gate


def requires_connection(
    provider: str,
    scopes: Sequence[str] | None = None,
    *,
    gate: Gate | Callable[[], Gate] | None = None,
    param: str = "api",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hand the decorated tool (sync or async) an HTTP client for the user's ``provider``
    connection in its ``param`` argument (hidden from the tool's input schema), or answer
    the tool call with the URL elicitation that asks the user to connect. A client without
    URL elicitation gets a tool error carrying the URL and what to do."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        if param not in signature.parameters:
            raise TypeError(f"{fn.__name__} must take a {param!r} parameter")
        hints = typing.get_type_hints(fn, include_extras=True)
        ctx_name = next(
            (n for n, t in hints.items() if isinstance(t, type) and issubclass(t, Context)), None
        )
        params = [
            p.replace(annotation=hints.get(n, p.annotation))
            for n, p in signature.parameters.items()
            if n != param
        ]
        if ctx_name is None:
            params.append(
                inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
            )
        is_async = inspect.iscoroutinefunction(fn)

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx: Context = kwargs[ctx_name] if ctx_name else kwargs.pop("ctx")
            the_gate = (gate() if callable(gate) else gate) or default_gate()
            try:
                connection = await the_gate.require(
                    ctx.session, the_gate.config.user_id, provider, tuple(scopes or ())
                )
            except ConsentRequired as exc:
                answer = raise_consent(exc, ctx.session)  # raises -32042 when it can
                raise ToolError(f"{answer['instructions']} URL: {answer['url']}") from None
            if is_async:
                kwargs[param] = ConnectionHTTP(the_gate, connection.connection_id, provider)
                return await fn(*args, **kwargs)
            kwargs[param] = SyncConnectionHTTP(
                the_gate.sync_dromos, connection.connection_id, provider
            )
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=hints.get("return", signature.return_annotation)
        )
        del wrapper.__wrapped__  # the schema comes from __signature__, not from fn
        wrapper.__annotations__ = {
            p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty
        }
        if "return" in hints:
            wrapper.__annotations__["return"] = hints["return"]
        return wrapper

    return decorate
