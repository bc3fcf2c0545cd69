"""The blocking client. All logic is in ``_core``; this module only does the I/O."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from . import _core
from .errors import TransportError
from .models import (
    Connection,
    ConnectionPage,
    ConnectionRequest,
    ConnectSession,
    ConnectSessionCreated,
    DeviceConnectionRequest,
    Provider,
    ReconnectRequest,
    Token,
)
from .retry import RetryPolicy

T = TypeVar("T")

__all__ = ["DromosClient"]


class DromosClient:
    """Blocking client of the Dromos gateway API.

    Args:
        base_url: the gateway, e.g. ``"https://dromos.example.com"``.
        api_key: the workspace API key; defaults to the ``DROMOS_API_KEY`` variable.
        timeout: per-request timeout in seconds (or an ``httpx.Timeout``). Defaults to 30 s
            (10 s to connect); with ``http_client`` given and no ``timeout``, that client's
            own timeout applies.
        retry: the :class:`RetryPolicy` for 429/502/503 and connection errors;
            ``RetryPolicy.disabled()`` turns retries off.
        user_agent: your product token (``"my-agent/1.2"``), put in front of the SDK's own
            ``User-Agent``.
        transport: an ``httpx.BaseTransport`` for the client to use (tests pass an
            ``httpx.MockTransport``).
        http_client: a ready ``httpx.Client`` to send through (proxies, custom TLS, pooling
            shared with other code). It is not closed by :meth:`close`.

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        user_agent: str | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        if transport is not None and http_client is not None:
            raise ValueError("pass either transport or http_client, not both")
        self._settings = _core.make_settings(
            base_url=base_url, api_key=api_key, timeout=timeout, retry=retry, user_agent=user_agent
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            transport=transport, timeout=self._settings.timeout or _core.DEFAULT_TIMEOUT
        )
        self._sleep: Callable[[float], None] = time.sleep
        self._clock: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return f"DromosClient(base_url={self._settings.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    # -- lifecycle --

    def close(self) -> None:
        """Close the underlying HTTP client, unless it was passed in as ``http_client``."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> DromosClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- driver --

    def _run(self, flow: _core.Flow[T]) -> T:
        outcome: _core.Outcome = None
        try:
            while True:
                action = flow.send(outcome)
                if isinstance(action, _core.Sleep):
                    self._sleep(action.seconds)
                    outcome = None
                else:
                    request = _core.build_request(self._http, self._settings, action)
                    try:
                        outcome = self._http.send(request)
                    except httpx.TransportError as exc:
                        outcome = exc
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    # -- API --

    def request_connection(
        self,
        user_id: str,
        provider_name: str,
        scopes: Sequence[str] | str,
        return_url: str,
        params: Mapping[str, str] | None = None,
    ) -> ConnectionRequest:
        """Start a connection: returns the ``auth_url`` to send the user's browser to and
        the new ``connection_id`` (status ``pending`` until the user consents)."""
        call = _core.request_connection_call(user_id, provider_name, scopes, return_url, params)
        return cast(ConnectionRequest, self._run(_core.execute(call, self._settings)))

    def request_device_connection(
        self,
        user_id: str,
        provider_name: str,
        scopes: Sequence[str] | str = (),
        params: Mapping[str, str] | None = None,
    ) -> DeviceConnectionRequest:
        """Start a device-flow connection (RFC 8628) for an agent with no browser redirect:
        show the user ``user_code`` at ``verification_uri``, then ``wait_for_active``."""
        call = _core.request_connection_call(
            user_id, provider_name, scopes, None, params, flow="device"
        )
        return cast(DeviceConnectionRequest, self._run(_core.execute(call, self._settings)))

    def request_machine_connection(
        self,
        user_id: str,
        provider_name: str,
        flow: str,
        scopes: Sequence[str] | str = (),
        params: Mapping[str, str] | None = None,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        private_key: str | None = None,
        audience: str | None = None,
        resource: str | None = None,
        subject: str | None = None,
    ) -> Connection:
        """A machine connection (no user consent): ``flow`` is ``client_credentials`` (the
        provider app's client, or ``client_id`` + ``client_secret`` for this connection;
        ``audience`` / ``resource`` where the provider needs them), ``jwt_bearer`` (a Google
        service account; ``subject`` to impersonate) or ``github_app`` (installation tokens;
        ``params={"installation_id": …}``), with ``private_key`` (PEM) and ``client_id``
        when the provider has none of its own. The connection comes back ``active``, or
        ``failed`` with the provider's error (wrong secret or key); secrets are never returned."""
        call = _core.request_machine_connection_call(
            user_id,
            provider_name,
            flow,
            scopes,
            params,
            {
                "client_id": client_id,
                "client_secret": client_secret,
                "private_key": private_key,
                "audience": audience,
                "resource": resource,
                "subject": subject,
            },
        )
        return self._run(_core.execute(call, self._settings))

    def create_static_connection(
        self,
        user_id: str,
        provider_name: str,
        credentials: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> Connection:
        """Store an API key (``{"type": "api_key", "api_key": …}``) or a Basic login
        (``{"type": "basic", "username": …, "password": …}``), verified by the provider
        first; a refused one raises InvalidRequestError with code ``invalid_credentials``."""
        call = _core.create_static_connection_call(user_id, provider_name, credentials, params)
        return self._run(_core.execute(call, self._settings))

    def replace_credentials(self, connection_id: str, credentials: Mapping[str, str]) -> Connection:
        """Replace a static connection's credential in place (verified first)."""
        call = _core.replace_credentials_call(connection_id, credentials)
        return self._run(_core.execute(call, self._settings))

    def check_connection(self, connection_id: str) -> Connection:
        """The connection's current state (no token)."""
        return self._run(_core.execute(_core.check_connection_call(connection_id), self._settings))

    def get_token(
        self, connection_id: str, auto_refresh: bool = False, min_ttl: int | None = None
    ) -> Token:
        """The connection's access token. With ``auto_refresh=True`` the gateway refreshes
        it first when it expires within ``min_ttl`` seconds (gateway default 60)."""
        call = _core.get_token_call(connection_id, auto_refresh, min_ttl)
        return self._run(_core.execute(call, self._settings))

    def refresh(self, connection_id: str) -> Token:
        """Refresh the connection's token now and return the new one."""
        return self._run(_core.execute(_core.refresh_call(connection_id), self._settings))

    def list_connections(
        self,
        user_id: str | None = None,
        provider_name: str | None = None,
        status: str | None = None,
        page: int | None = None,
        page_size: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ConnectionPage:
        """One page (1-based ``page``) of the workspace's connections, filtered (``tags``:
        every one must match)."""
        call = _core.list_connections_call(user_id, provider_name, status, page, page_size, tags)
        return self._run(_core.execute(call, self._settings))

    def delete_connection(self, connection_id: str) -> Connection:
        """Revoke the connection (at the provider where possible) and wipe its tokens."""
        call = _core.delete_connection_call(connection_id)
        return self._run(_core.execute(call, self._settings))

    def create_connect_session(
        self,
        return_url: str,
        user_id: str | None = None,
        allowed_providers: Sequence[str] | None = None,
        scopes: Mapping[str, Sequence[str]] | None = None,
        tags: Mapping[str, str] | None = None,
        expires_in: int | None = None,
        reconnect: str | None = None,
    ) -> ConnectSessionCreated:
        """A single-use, short-lived link to the hosted connect page (``connect_url``);
        with ``reconnect`` the page reconnects that connection in place."""
        call = _core.create_connect_session_call(
            user_id, return_url, allowed_providers, scopes, tags, expires_in, reconnect
        )
        return self._run(_core.execute(call, self._settings))

    def get_connect_session(self, session_id: str) -> ConnectSession:
        """The session's state and the connections it produced."""
        call = _core.get_connect_session_call(session_id)
        return self._run(_core.execute(call, self._settings))

    def reconnect(
        self,
        connection_id: str,
        scopes: Sequence[str] | str | None = None,
        return_url: str | None = None,
    ) -> ReconnectRequest:
        """A fresh ``auth_url`` for the same connection id; ``scopes`` add to its scopes.
        Another account's consent ends in ``error=account_mismatch`` and changes nothing."""
        call = _core.reconnect_call(connection_id, scopes, return_url)
        return self._run(_core.execute(call, self._settings))

    def list_providers(self) -> list[Provider]:
        """The providers configured on the broker."""
        return self._run(_core.execute(_core.list_providers_call(), self._settings))

    # -- the management API (keys with the admin scope) --

    def create_key(
        self,
        name: str,
        *,
        scopes: Sequence[str] | None = None,
        providers: Sequence[str] | None = None,
        user_ids: Sequence[str] | None = None,
        user_id_prefix: str | None = None,
        allowed_cidrs: Sequence[str] | None = None,
        egress_policy: Sequence[Any] | None = None,
        expires_at: datetime | str | None = None,
        expires_in: int | None = None,
    ) -> dict[str, Any]:
        """Create a key in the admin key's workspace, never with more rights than the admin
        key; ``expires_in`` (seconds) mints a short-lived key revoked with the admin key.
        The answer's ``"key"`` is the key itself, shown this once."""
        restrictions = {
            "scopes": list(scopes) if scopes is not None else None,
            "providers": list(providers) if providers is not None else None,
            "user_ids": list(user_ids) if user_ids is not None else None,
            "user_id_prefix": user_id_prefix,
            "allowed_cidrs": list(allowed_cidrs) if allowed_cidrs is not None else None,
            "egress_policy": list(egress_policy) if egress_policy is not None else None,
            "expires_in": expires_in,
        }
        call = _core.create_key_call(name, expires_at, restrictions)
        return self._run(_core.execute(call, self._settings))

    def list_keys(
        self, include_revoked: bool = False, page: int | None = None, page_size: int | None = None
    ) -> dict[str, Any]:
        """One page of the workspace's keys (prefix, scopes, restrictions, use; never a key)."""
        call = _core.list_keys_call(include_revoked, page, page_size)
        return self._run(_core.execute(call, self._settings))

    def get_key(self, prefix: str) -> dict[str, Any]:
        """One key of the workspace, by its public prefix."""
        return self._run(_core.execute(_core.get_key_call(prefix), self._settings))

    def revoke_key(self, prefix: str) -> dict[str, Any]:
        """Revoke the key and every key minted from it."""
        return self._run(_core.execute(_core.revoke_key_call(prefix), self._settings))

    def create_webhook(self, url: str, events: Sequence[str] | None = None) -> dict[str, Any]:
        """A webhook endpoint; the answer's ``"secret"`` (signing) is shown this once."""
        call = _core.create_webhook_call(url, events)
        return self._run(_core.execute(call, self._settings))

    def list_webhooks(self) -> list[dict[str, Any]]:
        """The workspace's webhook endpoints (never a secret)."""
        return self._run(_core.execute(_core.list_webhooks_call(), self._settings))

    def delete_webhook(self, webhook_id: str) -> dict[str, Any]:
        """Delete the endpoint and its delivery history."""
        call = _core.delete_webhook_call(webhook_id)
        return self._run(_core.execute(call, self._settings))

    def rotate_webhook_secret(self, webhook_id: str) -> dict[str, Any]:
        """A new signing secret (``"secret"``, shown this once); the old one stops at once."""
        call = _core.rotate_webhook_secret_call(webhook_id)
        return self._run(_core.execute(call, self._settings))

    def list_webhook_deliveries(
        self,
        webhook_id: str,
        status: str | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> dict[str, Any]:
        """One page of the endpoint's deliveries, newest first."""
        call = _core.list_webhook_deliveries_call(webhook_id, status, page, page_size)
        return self._run(_core.execute(call, self._settings))

    def redeliver_webhook_delivery(self, webhook_id: str, delivery_id: str) -> dict[str, Any]:
        """Queue a failed delivery again from scratch."""
        call = _core.redeliver_webhook_delivery_call(webhook_id, delivery_id)
        return self._run(_core.execute(call, self._settings))

    def list_audit_events(
        self,
        connection_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of the workspace's audit log, newest first (``next``: the older page)."""
        call = _core.list_audit_events_call(
            connection_id, actor, action, since, until, limit, cursor
        )
        return self._run(_core.execute(call, self._settings))

    def export_audit_events(
        self,
        since: datetime | str,
        until: datetime | str | None = None,
        connection_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[dict[str, Any]]:
        """The rows created in [since, until), oldest first (the NDJSON export, read whole)."""
        call = _core.export_audit_events_call(since, until, connection_id, actor, action)
        return self._run(_core.execute(call, self._settings))

    def list_workspace_providers(self) -> list[dict[str, Any]]:
        """Per name, the provider app the workspace uses: its own or the shared one
        (``"shared": True``). Never a secret (``client_secret_set`` says whether one is)."""
        call = _core.list_workspace_providers_call()
        return self._run(_core.execute(call, self._settings))

    def get_workspace_provider(self, name: str) -> dict[str, Any]:
        """The workspace's own provider app ``name`` (a shared one is not: 404)."""
        call = _core.get_workspace_provider_call(name)
        return self._run(_core.execute(call, self._settings))

    def upsert_workspace_provider(self, name: str, **fields: Any) -> dict[str, Any]:
        """Create or update the workspace's own provider app (``template``, ``display_name``,
        ``client_id``, ``client_secret`` (write-only), ``default_scopes``, ``authorize_params``,
        ``settings``, ``token_auth``, ``enabled``); fields left out keep their value."""
        call = _core.upsert_workspace_provider_call(name, fields)
        return self._run(_core.execute(call, self._settings))

    def delete_workspace_provider(self, name: str) -> None:
        """Delete the workspace's own provider app (409 ``provider_in_use`` while it has
        connections: disable it with ``enabled=False`` instead)."""
        call = _core.delete_workspace_provider_call(name)
        self._run(_core.execute(call, self._settings))

    def proxy(
        self,
        connection_id: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        retry: bool | None = None,
        retries: int | None = None,
        host: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Call the provider's API through the gateway: ``method`` ``path`` (with ``params``,
        ``headers`` and a ``content`` or ``json`` body) on the connection's provider, with its
        credential injected by the gateway — the token never reaches this process.

        Returns the provider's answer as it is, whatever its status (it carries the
        ``Dromos-Connection-Id`` header). The gateway's own refusals raise the typed errors
        (403 ``proxy_forbidden`` from the key's egress policy, 404, 409 connection not
        active, 400 bad path, 413, 502/504 provider unreachable or too slow …).

        ``retry=True`` lets the gateway repeat a non-idempotent call once after refreshing
        on a 401; ``retries=N`` has it retry 429/5xx answers (honouring ``Retry-After``);
        ``host`` picks another of the provider's API hosts. With ``stream=True`` the body
        is not read: iterate ``response.iter_bytes()`` and close the response.
        """
        request = _core.proxy_request(
            self._http,
            self._settings,
            connection_id,
            method,
            path,
            params=params,
            headers=headers,
            content=content,
            json=json,
            retry=retry,
            retries=retries,
            host=host,
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise TransportError(
                f"{request.method} {request.url.copy_with(query=None)} failed: "
                f"{type(exc).__name__}: {exc}",
                attempts=1,
            ) from exc
        gateway_refused = not response.is_success and "Dromos-Connection-Id" not in response.headers
        if gateway_refused or not stream:
            try:
                response.read()
            finally:
                response.close()
        error = _core.proxy_error(response)
        if error is not None:
            raise error
        return response

    def wait_for_active(
        self,
        connection_id: str,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        max_poll_interval: float = 10.0,
    ) -> Connection:
        """Poll until the connection is ``active`` and return it.

        Raises :class:`~dromos_sdk.ConnectionFailedError` if it becomes ``failed`` or
        ``revoked``, :class:`~dromos_sdk.WaitTimeoutError` after ``timeout`` seconds.
        """
        flow = _core.wait_for_active(
            connection_id,
            self._settings,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            clock=self._clock,
        )
        return self._run(flow)
