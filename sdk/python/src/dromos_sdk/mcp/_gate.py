"""The one home of the MCP consent logic: find the user's active connection for a provider,
or start one and raise the URL elicitation; watch the pending connection at the gateway and
send ``notifications/elicitation/complete`` when the user has answered; map gateway and
provider failures to messages a model can act on; bound what goes back into the
conversation. Used by the ``dromos-mcp`` tools and by :func:`requires_connection`.

How completion is learnt: the gateway has no push channel towards an MCP server (webhooks
would need a public URL on the agent's machine), so the server polls
``GET /v1/check-connection/{id}`` every ``poll_interval`` seconds (1 s by default) while a
consent is pending, for at most ``consent_timeout`` seconds (15 minutes by default).

Pending consents survive a restart: each is written to a small JSON state file (mode 0600;
``--state-file`` / ``DROMOS_MCP_STATE_FILE``, default
``$XDG_STATE_HOME/dromos-mcp/pending.json``; ``off`` keeps them in memory only). It holds
the connection id, the consent link the user was shown and the elicitation id: never a
token. The gateway stays the truth for the status: a restarted server asks
``check-connection`` before it shows a remembered link again, and forgets it once the
connection is active, failed or gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mcp import UrlElicitationRequiredError
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp.types import ElicitRequestURLParams

from .._async import AsyncDromosClient
from .._sync import DromosClient
from ..errors import (
    APIError,
    ConnectionNotActiveError,
    DromosError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UpstreamError,
)
from ..models import Connection, ConnectionPage

logger = logging.getLogger("dromos_sdk.mcp")

#: The protocol version that introduced URL elicitation (-32042) and
#: ``notifications/elicitation/complete``; 2026-07-28 retired both.
URL_ELICITATION_VERSIONS = frozenset({"2025-11-25"})
DEFAULT_MAX_RESULT_BYTES = 64 * 1024


@dataclass(frozen=True)
class GateConfig:
    gateway_url: str
    api_key: str
    user_id: str
    return_url: str
    poll_interval: float = 1.0
    consent_timeout: float = 900.0
    #: A consent link is shown again while younger than this; then a new one is made
    #: (the broker's OAUTH_STATE_TTL_SECONDS, 600 s by default, ends an unused link).
    link_max_age: float = 540.0
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Where pending consents are kept across restarts (None: in memory only).
    state_file: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> GateConfig:
        env = os.environ
        values: dict[str, Any] = {
            "gateway_url": env.get("DROMOS_GATEWAY_URL", ""),
            "api_key": env.get("DROMOS_API_KEY", ""),
            "user_id": env.get("DROMOS_USER_ID", ""),
            "return_url": env.get("DROMOS_RETURN_URL", ""),
        }
        if env.get("DROMOS_MCP_MAX_RESULT_BYTES"):
            values["max_result_bytes"] = int(env["DROMOS_MCP_MAX_RESULT_BYTES"])
        values["state_file"] = env.get("DROMOS_MCP_STATE_FILE") or default_state_file()
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["state_file"] in ("off", "none", ""):
            values["state_file"] = None
        missing = [
            name
            for name, key in (
                ("DROMOS_GATEWAY_URL", "gateway_url"),
                ("DROMOS_API_KEY", "api_key"),
                ("DROMOS_USER_ID / --user-id", "user_id"),
            )
            if not values[key]
        ]
        if missing:
            raise SystemExit(f"dromos-mcp: missing configuration: {', '.join(missing)}")
        if not values["return_url"]:
            # Where the browser lands after consent; the broker must allow it.
            values["return_url"] = values["gateway_url"].rstrip("/") + "/"
        return cls(**values)


def default_state_file() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "dromos-mcp", "pending.json")


@dataclass
class Pending:
    user_id: str
    provider: str
    connection_id: str
    url: str
    elicitation_id: str
    scopes: tuple[str, ...]
    watchers: set[int] = field(default_factory=set)
    created_at: float = field(default_factory=time.time)


class PendingStore:
    """Pending consents in a JSON file (0600, written whole and renamed into place), keyed
    by gateway, user and provider, so that several servers (users, gateways) can share it.
    Entries older than ``max_age`` are dropped. Never holds a token: the connection id, the
    consent link the user was shown, the elicitation id, the scopes asked for."""

    VERSION = 1

    def __init__(self, path: str | None, gateway_url: str, max_age: float) -> None:
        self.path = Path(path) if path else None
        self.gateway = gateway_url.rstrip("/")
        self.max_age = max_age

    def _read(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        now = time.time()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["pending"] if data.get("version") == self.VERSION else []
            return [
                e
                for e in entries
                if isinstance(e, dict) and now - float(e.get("created_at", 0)) < self.max_age
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring unreadable state file %s (%s)", self.path, type(exc).__name__)
            return []

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pending-")  # 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"version": self.VERSION, "pending": entries}, out, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            logger.warning(
                "cannot write state file %s (%s): pending consents are kept in memory only",
                self.path,
                type(exc).__name__,
            )

    def _mine(self, entry: dict[str, Any], user_id: str, provider: str) -> bool:
        return (entry.get("gateway"), entry.get("user_id"), entry.get("provider")) == (
            self.gateway,
            user_id,
            provider,
        )

    def load(self, user_id: str, provider: str) -> Pending | None:
        for e in self._read():
            if self._mine(e, user_id, provider):
                try:
                    return Pending(
                        user_id=user_id,
                        provider=provider,
                        connection_id=str(e["connection_id"]),
                        url=str(e["url"]),
                        elicitation_id=str(e["elicitation_id"]),
                        scopes=tuple(str(s) for s in e["scopes"]),
                        created_at=float(e["created_at"]),
                    )
                except (KeyError, TypeError, ValueError):
                    return None
        return None

    def save(self, pending: Pending) -> None:
        if self.path is None:
            return
        entries = [e for e in self._read() if not self._mine(e, pending.user_id, pending.provider)]
        entries.append(
            {
                "gateway": self.gateway,
                "user_id": pending.user_id,
                "provider": pending.provider,
                "connection_id": pending.connection_id,
                "url": pending.url,
                "elicitation_id": pending.elicitation_id,
                "scopes": list(pending.scopes),
                "created_at": pending.created_at,
            }
        )
        self._write(entries)

    def drop(self, pending: Pending) -> None:
        if self.path is None:
            return
        entries = self._read()
        kept = [
            e
            for e in entries
            if not (
                self._mine(e, pending.user_id, pending.provider)
                and e.get("connection_id") == pending.connection_id
            )
        ]
        if len(kept) != len(entries):
            self._write(kept)


class ConsentRequired(Exception):
    """The user must open ``pending.url``; converted by :func:`raise_consent`."""

    def __init__(self, pending: Pending) -> None:
        super().__init__(f"consent required for {pending.provider}")
        self.pending = pending


def consent_message(pending: Pending) -> str:
    return (
        f"Connect your {pending.provider} account to continue: open the link, sign in and "
        f"approve access. Dromos keeps the tokens; this conversation never sees them."
    )


def supports_url_elicitation(session: ServerSession | None) -> bool:
    if session is None or session.protocol_version not in URL_ELICITATION_VERSIONS:
        return False
    caps = session.client_capabilities
    return bool(caps and caps.elicitation and caps.elicitation.url is not None)


def raise_consent(exc: ConsentRequired, session: ServerSession | None) -> dict[str, Any]:
    """Raise -32042 for a client that supports URL elicitation; otherwise return the tool
    result that carries the URL and says what to do."""
    pending = exc.pending
    if supports_url_elicitation(session):
        raise UrlElicitationRequiredError(
            [
                ElicitRequestURLParams(
                    message=consent_message(pending),
                    url=pending.url,
                    elicitation_id=pending.elicitation_id,
                )
            ],
            message=f"Authorization required: connect {pending.provider} at the URL, then retry",
        )
    return {
        "status": "authorization_required",
        "provider": pending.provider,
        "connection_id": pending.connection_id,
        "url": pending.url,
        "instructions": (
            f"No active {pending.provider} connection for this user. Show the user this URL "
            "and ask them to open it and approve access; when they say they are done, call "
            "this tool again (or call `connect` to check)."
        ),
    }


class Gate:
    """Consent and proxy plumbing shared by the tools and the decorator (one per process)."""

    def __init__(
        self,
        config: GateConfig,
        client: AsyncDromosClient | None = None,
        sync_client: DromosClient | None = None,
    ) -> None:
        self.config = config
        self._sync_client = sync_client
        self.dromos = client or AsyncDromosClient(
            config.gateway_url, api_key=config.api_key, user_agent="dromos-mcp"
        )
        self._pending: dict[tuple[str, str], Pending] = {}
        self._store = PendingStore(
            config.state_file, config.gateway_url, max_age=config.link_max_age
        )
        self._denied: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def sync_dromos(self) -> DromosClient:
        """The blocking client, for sync tools wrapped by @requires_connection."""
        if self._sync_client is None:
            self._sync_client = DromosClient(
                self.config.gateway_url, api_key=self.config.api_key, user_agent="dromos-mcp"
            )
        return self._sync_client

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.dromos.aclose()

    # -- providers and connections ------------------------------------------------------

    async def check_provider(self, provider: str) -> None:
        names = [p.name for p in await guarded(self.dromos.list_providers())]
        if provider not in names:
            raise ToolError(
                f"provider: unknown provider {provider!r}; configured providers: "
                f"{', '.join(sorted(names)) or 'none'} (see list_providers)"
            )

    async def active_connection(
        self, user_id: str, provider: str, scopes: Sequence[str] = ()
    ) -> Connection | None:
        page: ConnectionPage = await guarded(
            self.dromos.list_connections(user_id=user_id, provider_name=provider, status="active")
        )
        for connection in page.results:
            granted = set(connection.granted_scopes or connection.scopes)
            if connection.user_id == user_id and set(scopes) <= granted:
                return connection
        return None

    async def own_connection(self, user_id: str, connection_id: str) -> Connection:
        """The connection when it belongs to ``user_id``; another user's (or another
        workspace's) is reported exactly like an unknown one."""
        connection: Connection = await guarded(self.dromos.check_connection(connection_id))
        if connection.user_id != user_id:
            raise ToolError(not_found_message(connection_id))
        return connection

    async def require(
        self,
        session: ServerSession | None,
        user_id: str,
        provider: str,
        scopes: Sequence[str] = (),
    ) -> Connection:
        """The user's active connection, or :class:`ConsentRequired` (a new or still
        pending consent), or a ToolError when the user denied the last one."""
        key = (user_id, provider)
        connection = await self.active_connection(user_id, provider, scopes)
        if connection is not None:
            self._forget(self._pending.get(key) or self._store.load(user_id, provider))
            self._denied.pop(key, None)
            return connection
        denied = self._denied.pop(key, None)
        if denied is not None:
            raise ToolError(denied_message(provider, denied))
        pending = self._pending.get(key)
        if pending is None:
            # Started before a restart: the link the user may already have open.
            pending = self._store.load(user_id, provider)
            if pending is not None:
                self._pending[key] = pending
        if pending is not None and time.time() - pending.created_at > self.config.link_max_age:
            self._forget(pending)  # its link has expired at the broker by now
            pending = None
        if pending is not None and tuple(scopes) == pending.scopes:
            try:
                current = await self.dromos.check_connection(pending.connection_id)
            except NotFoundError:
                self._forget(pending)
                pending = None
            except DromosError as exc:
                raise ToolError(gateway_error_message(exc)) from None
            else:
                if current.status != "pending":
                    self._forget(pending)
                    pending = None
                    if current.status == "failed":
                        # Answered (denied or failed) with nobody watching: say so once.
                        raise ToolError(denied_message(provider, current.error or current.status))
        else:
            pending = None
        if pending is None:
            await self.check_provider(provider)
            request = await guarded(
                self.dromos.request_connection(
                    user_id, provider, list(scopes), self.config.return_url
                )
            )
            pending = Pending(
                user_id=user_id,
                provider=provider,
                connection_id=request.connection_id,
                url=request.auth_url,
                elicitation_id=f"dromos-{request.connection_id}",
                scopes=tuple(scopes),
            )
            self._pending[key] = pending
            self._store.save(pending)
        if session is not None and supports_url_elicitation(session):
            self._watch(pending, session)
        raise ConsentRequired(pending)

    def _forget(self, pending: Pending | None) -> None:
        if pending is None:
            return
        key = (pending.user_id, pending.provider)
        if self._pending.get(key) is pending:
            del self._pending[key]
        self._store.drop(pending)

    # -- completion ---------------------------------------------------------------------

    def _watch(self, pending: Pending, session: ServerSession) -> None:
        if id(session) in pending.watchers:
            return
        pending.watchers.add(id(session))
        task = asyncio.get_running_loop().create_task(self._poll(pending, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self, pending: Pending, session: ServerSession) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.consent_timeout
        key = (pending.user_id, pending.provider)
        try:
            while loop.time() < deadline:
                await asyncio.sleep(self.config.poll_interval)
                try:
                    connection = await self.dromos.check_connection(pending.connection_id)
                except DromosError as exc:
                    logger.info("consent poll failed: %s", type(exc).__name__)
                    continue
                if connection.status == "pending":
                    continue
                if connection.status != "active":
                    self._denied[key] = connection.error or connection.status
                self._forget(pending)
                await session.send_elicit_complete(pending.elicitation_id)
                return
        except Exception:  # the session went away: nobody to tell
            logger.info("could not send elicitation/complete", exc_info=True)
        finally:
            pending.watchers.discard(id(session))


# -- errors ---------------------------------------------------------------------------------


def denied_message(provider: str, reason: str) -> str:
    return (
        f"The user did not grant access to {provider} ({reason}). Do not retry on your "
        f"own: ask the user whether to try again, then call `connect`."
    )


def not_found_message(connection_id: str) -> str:
    return (
        f"connection_id: connection {connection_id!r} not found for this user. "
        "Call list_connections to see the user's connections, or pass provider instead."
    )


async def guarded(awaitable: Any) -> Any:
    """Await a gateway call; a failure becomes a ToolError with an actionable message."""
    try:
        return await awaitable
    except DromosError as exc:
        raise ToolError(gateway_error_message(exc)) from None


def gateway_error_message(exc: DromosError) -> str:
    if isinstance(exc, TransportError):
        return (
            "The Dromos gateway cannot be reached right now (network error). Nothing was "
            "sent to the provider. Retry in a little while; if it persists, the operator "
            "should check DROMOS_GATEWAY_URL and that the gateway is running."
        )
    if not isinstance(exc, APIError):
        return f"Dromos error: {exc}"
    body = exc.body if isinstance(exc.body, Mapping) else {}
    if isinstance(exc, UnauthorizedError):
        return "The Dromos API key was refused: the operator must check DROMOS_API_KEY."
    if isinstance(exc, ForbiddenError):
        if exc.code == "proxy_forbidden":
            rule = body.get("missing_rule") or "this call"
            return (
                f"Forbidden by the API key's proxy policy: no rule allows {rule}. No call was "
                "made to the provider. Ask the Dromos operator to allow it, or use another path."
            )
        return f"Forbidden: {exc.message} (the API key lacks a permission; ask the operator)."
    if isinstance(exc, NotFoundError):
        return (
            "connection_id: connection not found for this user. Call list_connections to "
            "see the user's connections, or pass provider instead."
        )
    if isinstance(exc, ConnectionNotActiveError):
        return f"The connection is {exc.status or 'not active'}: call `connect` to reconnect."
    if isinstance(exc, RateLimitedError):
        wait = f"{exc.retry_after:g} s" if exc.retry_after else "a few seconds"
        return f"Rate limited by Dromos: wait {wait} before retrying."
    if isinstance(exc, UpstreamError) or exc.code in ("provider_unreachable", "provider_timeout"):
        return (
            f"The provider is down or not answering ({exc.code}). Retry later; "
            "nothing needs to change on your side."
        )
    if isinstance(exc, UnavailableError):
        return "Dromos is temporarily unavailable (503). Retry in a few seconds."
    if isinstance(exc, InvalidRequestError):
        return f"Invalid request ({exc.code}): {exc.message}"
    return f"Dromos answered {exc.status_code} {exc.code}: {exc.message}"


# -- bounded results ------------------------------------------------------------------------

_TEXT_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv", "html")


def _is_text(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media.startswith("text/") or any(t in media for t in _TEXT_TYPES) or not media


async def bounded_answer(response: httpx.Response, max_bytes: int) -> dict[str, Any]:
    """The provider's answer as a tool result: status, content type, size and the body —
    JSON decoded, text truncated at ``max_bytes`` with a marker, binary described."""
    kept = bytearray()
    total = 0
    digest = hashlib.sha256()
    try:
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            digest.update(chunk)
            if len(kept) <= max_bytes:
                kept.extend(chunk[: max_bytes + 1 - len(kept)])
    finally:
        await response.aclose()
    content_type = response.headers.get("content-type", "")
    result: dict[str, Any] = {
        "status": response.status_code,
        "content_type": content_type,
        "bytes": total,
    }
    text: str | None = None
    if _is_text(content_type):
        try:
            text = bytes(kept[:max_bytes]).decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start >= max_bytes - 3 and total > max_bytes:  # cut inside a character
                text = bytes(kept[: exc.start]).decode("utf-8")
    if text is None:
        result["body"] = (
            f"[binary body: {total} bytes of {content_type or 'unknown type'}, "
            f"sha256 {digest.hexdigest()}; not shown]"
        )
        return result
    if total > max_bytes:
        shown = len(text.encode())
        result["body"] = f"{text}\n[truncated: showing {shown} of {total} bytes]"
        result["truncated"] = True
        return result
    if "json" in content_type.lower():
        import json

        try:
            result["body"] = json.loads(text) if text else None
            return result
        except ValueError:
            pass
    result["body"] = text
    return result


def provider_failure(response: httpx.Response) -> str | None:
    """An actionable message for a provider answer the model should not just read."""
    status = response.status_code
    if status == 429:
        after = response.headers.get("retry-after")
        wait = f"{after} s (Retry-After)" if after else "a while"
        return f"The provider rate limited this call (HTTP 429): wait {wait} before retrying."
    if status in (500, 502, 503, 504):
        return f"The provider is failing (HTTP {status}): it is down or overloaded. Retry later."
    return None
