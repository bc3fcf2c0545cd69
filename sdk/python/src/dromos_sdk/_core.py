"""The I/O-free core shared by :class:`DromosClient` and :class:`AsyncDromosClient`.

Everything that decides *what* to send and *what an answer means* lives here: building
requests, decoding answers into models or typed errors, the retry rules and the polling of
``wait_for_active``. The logic is written as generators that *yield* what they need done —
send a :class:`RequestSpec` (the driver sends back the ``httpx.Response`` or the
``httpx.TransportError``) or :class:`Sleep` (the driver sends back ``None``) — and
*return* the result. The sync and async clients are thin drivers that run these
generators with blocking or awaitable I/O; neither holds any logic of its own.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._version import __version__
from .errors import (
    STATUS_ERRORS,
    APIError,
    ConnectionFailedError,
    DromosError,
    TransportError,
    UnexpectedResponseError,
    WaitTimeoutError,
)
from .models import (
    Connection,
    ConnectionPage,
    ConnectionRequest,
    ConnectionStatus,
    ConnectSession,
    ConnectSessionCreated,
    DeviceConnectionRequest,
    Provider,
    ReconnectRequest,
    Token,
)
from .retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

logger = logging.getLogger("dromos_sdk")

T = TypeVar("T")

API_KEY_ENV = "DROMOS_API_KEY"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_USER_AGENT = (
    f"dromos-sdk-python/{__version__} httpx/{httpx.__version__} python/{platform.python_version()}"
)
# Connection-level failures worth another try. Not UnsupportedProtocol / ProxyError /
# LocalProtocolError: those are configuration or programming errors that retrying won't fix.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


# --- the driver protocol ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One HTTP request to make, relative to the client's base URL."""

    method: str
    path: str
    params: Mapping[str, str | Sequence[str]] | None = None
    json: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this many seconds, then resume the generator with ``None``."""

    seconds: float


Action = RequestSpec | Sleep
Outcome = httpx.Response | httpx.TransportError | None
Flow = Generator[Action, Outcome, T]


# --- client settings ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What a client was configured with. ``headers`` holds the API key: kept out of repr."""

    base_url: str
    headers: Mapping[str, str] = field(repr=False)
    timeout: httpx.Timeout | None
    retry: RetryPolicy


def make_settings(
    *,
    base_url: str,
    api_key: str | None,
    timeout: float | httpx.Timeout | None,
    retry: RetryPolicy | None,
    user_agent: str | None,
) -> Settings:
    """Validate the constructor arguments shared by both clients."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError("base_url must be an http:// or https:// URL")
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise DromosError(f"no API key: pass api_key= or set the {API_KEY_ENV} variable")
    agent = f"{user_agent} {DEFAULT_USER_AGENT}" if user_agent else DEFAULT_USER_AGENT
    return Settings(
        base_url=base_url.rstrip("/"),
        headers={
            "Authorization": f"Bearer {key}",
            "Accept": "application/json",
            "User-Agent": agent,
        },
        timeout=httpx.Timeout(timeout) if timeout is not None else None,
        retry=retry if retry is not None else RetryPolicy(),
    )


def build_request(
    http: httpx.Client | httpx.AsyncClient, settings: Settings, spec: RequestSpec
) -> httpx.Request:
    """Turn a spec into an ``httpx.Request`` (``build_request`` does no I/O)."""
    return http.build_request(
        spec.method,
        settings.base_url + spec.path,
        params=dict(spec.params) if spec.params else None,
        json=dict(spec.json) if spec.json is not None else None,
        headers=dict(settings.headers),
        timeout=settings.timeout if settings.timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )


# --- operations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """A request and the function that reads its success body."""

    spec: RequestSpec
    parse: Callable[[Any], T]
    raw: bool = False  # parse gets the body as text (NDJSON), not decoded JSON


def _segment(connection_id: str) -> str:
    if not isinstance(connection_id, str) or not connection_id:
        raise ValueError("connection_id must be a non-empty string")
    return quote(connection_id, safe="")


def _scope_list(scopes: Sequence[str] | str) -> list[str]:
    # A scope token never contains a space (RFC 6749 §3.3), so a string is a
    # space-separated list, not a sequence of one-letter scopes.
    if isinstance(scopes, str):
        return scopes.split()
    return [str(scope) for scope in scopes]


def _parse_providers(data: Any) -> list[Provider]:
    return [Provider.from_dict(item) for item in data["providers"]]


def request_connection_call(
    user_id: str,
    provider_name: str,
    scopes: Sequence[str] | str,
    return_url: str | None,
    params: Mapping[str, str] | None,
    flow: str | None = None,
) -> Call[Any]:
    body: dict[str, Any] = {
        "user_id": user_id,
        "provider_name": provider_name,
        "scopes": _scope_list(scopes),
        "return_url": return_url,
    }
    if return_url is None:  # the device flow has no return URL
        del body["return_url"]
    if params:
        body["params"] = {str(k): str(v) for k, v in params.items()}
    if flow:
        body["flow"] = flow
    parse = DeviceConnectionRequest.from_dict if flow == "device" else ConnectionRequest.from_dict
    return Call(RequestSpec("POST", "/v1/request-connection", json=body), parse)


MACHINE_FLOWS = ("client_credentials", "jwt_bearer", "github_app")
_MACHINE_FIELDS = ("client_id", "client_secret", "private_key", "audience", "resource", "subject")


def request_machine_connection_call(
    user_id: str,
    provider_name: str,
    flow: str,
    scopes: Sequence[str] | str,
    params: Mapping[str, str] | None,
    grant: Mapping[str, str | None],
) -> Call[Connection]:
    if flow not in MACHINE_FLOWS:
        raise ValueError(f"flow must be one of {', '.join(MACHINE_FLOWS)}")
    unknown = set(grant) - set(_MACHINE_FIELDS)
    if unknown:
        raise ValueError(f"unknown machine-grant fields: {', '.join(sorted(unknown))}")
    body: dict[str, Any] = {
        "user_id": user_id,
        "provider_name": provider_name,
        "flow": flow,
        "scopes": _scope_list(scopes),
    }
    if params:
        body["params"] = {str(k): str(v) for k, v in params.items()}
    # Secrets (client_secret, private_key) go to the gateway once and are never returned.
    if grant.get("client_id") is not None:
        body["client_id"] = grant["client_id"]
    if grant.get("client_secret") is not None:
        body["client_secret"] = grant["client_secret"]
    if grant.get("private_key") is not None:
        body["private_key"] = grant["private_key"]
    if grant.get("audience") is not None:
        body["audience"] = grant["audience"]
    if grant.get("resource") is not None:
        body["resource"] = grant["resource"]
    if grant.get("subject") is not None:
        body["subject"] = grant["subject"]
    return Call(RequestSpec("POST", "/v1/request-connection", json=body), Connection.from_dict)


def _credentials(credentials: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(credentials, Mapping) or credentials.get("type") not in ("api_key", "basic"):
        raise ValueError(
            'credentials must be {"type": "api_key", "api_key": …} or {"type": "basic", …}'
        )
    return {str(k): str(v) for k, v in credentials.items()}


def create_static_connection_call(
    user_id: str,
    provider_name: str,
    credentials: Mapping[str, str],
    params: Mapping[str, str] | None,
) -> Call[Connection]:
    payload: dict[str, Any] = {
        "user_id": user_id,
        "provider_name": provider_name,
        "credentials": _credentials(credentials),
        **({"params": {str(k): str(v) for k, v in params.items()}} if params else {}),
    }
    return Call(RequestSpec("POST", "/v1/connections", json=payload), Connection.from_dict)


def replace_credentials_call(
    connection_id: str, credentials: Mapping[str, str]
) -> Call[Connection]:
    path = f"/v1/connections/{_segment(connection_id)}/credentials"
    return Call(
        RequestSpec("PUT", path, json={"credentials": _credentials(credentials)}),
        Connection.from_dict,
    )


def check_connection_call(connection_id: str) -> Call[Connection]:
    path = f"/v1/check-connection/{_segment(connection_id)}"
    return Call(RequestSpec("GET", path), Connection.from_dict)


def get_token_call(connection_id: str, auto_refresh: bool, min_ttl: int | None) -> Call[Token]:
    params: dict[str, str] = {}
    if auto_refresh:
        params["auto_refresh"] = "true"
    if min_ttl is not None:
        if min_ttl < 0:
            raise ValueError("min_ttl must be >= 0")
        params["min_ttl"] = str(int(min_ttl))
    path = f"/v1/token/{_segment(connection_id)}"
    return Call(RequestSpec("GET", path, params=params or None), Token.from_dict)


def refresh_call(connection_id: str) -> Call[Token]:
    return Call(RequestSpec("POST", f"/v1/refresh/{_segment(connection_id)}"), Token.from_dict)


def list_connections_call(
    user_id: str | None,
    provider_name: str | None,
    status: str | None,
    page: int | None,
    page_size: int | None,
    tags: Mapping[str, str] | None = None,
) -> Call[ConnectionPage]:
    query: dict[str, str | list[str] | None] = {
        "user_id": user_id,
        "provider_name": provider_name,
        "status": str(status) if status is not None else None,
        "page": str(page) if page is not None else None,
        "page_size": str(page_size) if page_size is not None else None,
        "tag": [f"{key}:{value}" for key, value in sorted(tags.items())] if tags else None,
    }
    params = {key: value for key, value in query.items() if value is not None}
    return Call(
        RequestSpec("GET", "/v1/connections", params=params or None), ConnectionPage.from_dict
    )


def delete_connection_call(connection_id: str) -> Call[Connection]:
    path = f"/v1/connections/{_segment(connection_id)}"
    return Call(RequestSpec("DELETE", path), Connection.from_dict)


def create_connect_session_call(
    user_id: str | None,
    return_url: str,
    allowed_providers: Sequence[str] | None,
    scopes: Mapping[str, Sequence[str]] | None,
    tags: Mapping[str, str] | None,
    expires_in: int | None,
    reconnect: str | None,
) -> Call[ConnectSessionCreated]:
    session: dict[str, Any] = {"return_url": return_url}
    if user_id is not None:
        session["user_id"] = user_id
    if allowed_providers is not None:
        session["allowed_providers"] = list(allowed_providers)
    if scopes is not None:
        session["scopes"] = {str(k): _scope_list(v) for k, v in scopes.items()}
    if tags is not None:
        session["tags"] = {str(k): str(v) for k, v in tags.items()}
    if expires_in is not None:
        session["expires_in"] = int(expires_in)
    if reconnect is not None:
        session["reconnect"] = reconnect
    return Call(
        RequestSpec("POST", "/v1/connect-sessions", json=session), ConnectSessionCreated.from_dict
    )


def get_connect_session_call(session_id: str) -> Call[ConnectSession]:
    path = f"/v1/connect-sessions/{_segment(session_id)}"
    return Call(RequestSpec("GET", path), ConnectSession.from_dict)


def reconnect_call(
    connection_id: str, scopes: Sequence[str] | str | None, return_url: str | None
) -> Call[ReconnectRequest]:
    wanted: dict[str, Any] = {}
    if scopes is not None:
        wanted["scopes"] = _scope_list(scopes)
    if return_url is not None:
        wanted["return_url"] = return_url
    path = f"/v1/connections/{_segment(connection_id)}/reconnect"
    return Call(RequestSpec("POST", path, json=wanted), ReconnectRequest.from_dict)


def list_providers_call() -> Call[list[Provider]]:
    return Call(RequestSpec("GET", "/v1/providers"), _parse_providers)


# --- the management API (admin keys) ------------------------------------------------
# Answers are returned as decoded JSON objects (dicts): the fields are listed in the
# gateway's OpenAPI schema (components Key, KeyCreated, Webhook, WebhookDelivery, AuditEvent).

_KEY_RESTRICTIONS = (
    "scopes",
    "providers",
    "user_ids",
    "user_id_prefix",
    "allowed_cidrs",
    "egress_policy",
    "expires_in",
)


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data


def _moment(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _present(query: Mapping[str, Any]) -> dict[str, str] | None:
    params = {
        key: ("true" if value is True else "false" if value is False else str(value))
        for key, value in query.items()
        if value is not None
    }
    return params or None


def create_key_call(
    name: str, expires_at: datetime | str | None, restrictions: Mapping[str, Any]
) -> Call[dict[str, Any]]:
    unknown = set(restrictions) - set(_KEY_RESTRICTIONS)
    if unknown:
        raise ValueError(f"unknown key restriction(s): {', '.join(sorted(unknown))}")
    key: dict[str, Any] = {"name": name}
    key.update({field: value for field, value in restrictions.items() if value is not None})
    if expires_at is not None:
        key["expires_at"] = _moment(expires_at)
    return Call(RequestSpec("POST", "/v1/keys", json=key), _object)


def list_keys_call(
    include_revoked: bool, page: int | None, page_size: int | None
) -> Call[dict[str, Any]]:
    query = {
        "include_revoked": True if include_revoked else None,
        "page": page,
        "page_size": page_size,
    }
    return Call(RequestSpec("GET", "/v1/keys", params=_present(query)), _object)


def get_key_call(prefix: str) -> Call[dict[str, Any]]:
    return Call(RequestSpec("GET", f"/v1/keys/{_segment(prefix)}"), _object)


def revoke_key_call(prefix: str) -> Call[dict[str, Any]]:
    return Call(RequestSpec("DELETE", f"/v1/keys/{_segment(prefix)}"), _object)


def create_webhook_call(url: str, events: Sequence[str] | None) -> Call[dict[str, Any]]:
    webhook: dict[str, Any] = {"url": url}
    if events is not None:
        webhook["events"] = [str(event) for event in events]
    return Call(RequestSpec("POST", "/v1/webhooks", json=webhook), _object)


def _webhook_results(data: Any) -> list[dict[str, Any]]:
    return [_object(item) for item in data["results"]]


def list_webhooks_call() -> Call[list[dict[str, Any]]]:
    return Call(RequestSpec("GET", "/v1/webhooks"), _webhook_results)


def delete_webhook_call(webhook_id: str) -> Call[dict[str, Any]]:
    return Call(RequestSpec("DELETE", f"/v1/webhooks/{_segment(webhook_id)}"), _object)


def rotate_webhook_secret_call(webhook_id: str) -> Call[dict[str, Any]]:
    path = f"/v1/webhooks/{_segment(webhook_id)}/rotate-secret"
    return Call(RequestSpec("POST", path), _object)


def list_webhook_deliveries_call(
    webhook_id: str, status: str | None, page: int | None, page_size: int | None
) -> Call[dict[str, Any]]:
    query = {"status": status, "page": page, "page_size": page_size}
    path = f"/v1/webhooks/{_segment(webhook_id)}/deliveries"
    return Call(RequestSpec("GET", path, params=_present(query)), _object)


def redeliver_webhook_delivery_call(webhook_id: str, delivery_id: str) -> Call[dict[str, Any]]:
    path = f"/v1/webhooks/{_segment(webhook_id)}/deliveries/{_segment(delivery_id)}/redeliver"
    return Call(RequestSpec("POST", path), _object)


def _audit_query(
    connection_id: str | None,
    actor: str | None,
    action: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
) -> dict[str, Any]:
    return {
        "connection_id": connection_id,
        "actor": actor,
        "action": action,
        "since": _moment(since) if since is not None else None,
        "until": _moment(until) if until is not None else None,
    }


def list_audit_events_call(
    connection_id: str | None,
    actor: str | None,
    action: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> Call[dict[str, Any]]:
    query = {
        **_audit_query(connection_id, actor, action, since, until),
        "limit": limit,
        "cursor": cursor,
    }
    return Call(RequestSpec("GET", "/v1/audit", params=_present(query)), _object)


def _ndjson(text: Any) -> list[dict[str, Any]]:
    return [_object(json.loads(line)) for line in str(text).splitlines() if line.strip()]


def export_audit_events_call(
    since: datetime | str,
    until: datetime | str | None,
    connection_id: str | None,
    actor: str | None,
    action: str | None,
) -> Call[list[dict[str, Any]]]:
    query = _audit_query(connection_id, actor, action, since, until)
    return Call(RequestSpec("GET", "/v1/audit/export", params=_present(query)), _ndjson, raw=True)


def _providers_admin(data: Any) -> list[dict[str, Any]]:
    return [_object(item) for item in data["providers"]]


def _nothing(_: Any) -> None:
    return None


def list_workspace_providers_call() -> Call[list[dict[str, Any]]]:
    return Call(RequestSpec("GET", "/v1/workspace-providers"), _providers_admin)


def get_workspace_provider_call(name: str) -> Call[dict[str, Any]]:
    return Call(RequestSpec("GET", f"/v1/workspace-providers/{_segment(name)}"), _object)


def upsert_workspace_provider_call(name: str, fields: Mapping[str, Any]) -> Call[dict[str, Any]]:
    path = f"/v1/workspace-providers/{_segment(name)}"
    return Call(RequestSpec("PUT", path, json=dict(fields)), _object)


def delete_workspace_provider_call(name: str) -> Call[None]:
    path = f"/v1/workspace-providers/{_segment(name)}"
    return Call(RequestSpec("DELETE", path), _nothing, raw=True)


# --- the API proxy -----------------------------------------------------------------

PROXY_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


def proxy_request(
    http: httpx.Client | httpx.AsyncClient,
    settings: Settings,
    connection_id: str,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    content: bytes | None,
    json: Any,
    retry: bool | None,
    retries: int | None,
    host: str | None,
) -> httpx.Request:
    """The request for ``/v1/proxy/{connection_id}/{path}`` (no I/O). The SDK's own
    Authorization (the API key) is sent; the gateway injects the provider credential."""
    verb = method.upper() if isinstance(method, str) else ""
    if verb not in PROXY_METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(PROXY_METHODS))}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(
            "path must start with / (the provider API's path, e.g. /gmail/v1/users/me)"
        )
    if content is not None and json is not None:
        raise ValueError("pass content or json, not both")
    sent = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
    sent.update(settings.headers)
    sent.pop("Accept", None)  # the provider's media type is the caller's business
    if headers and "accept" in {k.lower() for k in headers}:
        sent["Accept"] = next(v for k, v in headers.items() if k.lower() == "accept")
    if retry is not None:
        sent["Dromos-Proxy-Retry"] = "true" if retry else "false"
    if retries is not None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        sent["Dromos-Proxy-Retries"] = str(int(retries))
    if host is not None:
        sent["Dromos-Proxy-Host"] = host
    return http.build_request(
        verb,
        f"{settings.base_url}/v1/proxy/{_segment(connection_id)}{path}",
        params=dict(params) if params else None,
        content=content,
        json=json,
        headers=sent,
        timeout=settings.timeout if settings.timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )


def proxy_error(response: httpx.Response) -> APIError | None:
    """The gateway's own refusal (policy, unknown connection, timeout …) as a typed error, or
    None when the answer is the provider's (it carries ``Dromos-Connection-Id``)."""
    if response.is_success or "Dromos-Connection-Id" in response.headers:
        return None
    return error_from_response(response)


# --- answers ------------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an HTTP error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code = body.get("error")
    message = body.get("message")
    status = body.get("status")
    details = body.get("details")
    cls = STATUS_ERRORS.get(response.status_code, APIError)
    return cls(
        response.status_code,
        code if isinstance(code, str) and code else f"http_{response.status_code}",
        message if isinstance(message, str) else response.reason_phrase,
        status if isinstance(status, str) else None,
        parse_retry_after(response.headers.get("Retry-After")),
        details=details if isinstance(details, dict) else None,
        body=body,
    )


def parse_success(call: Call[T], response: httpx.Response) -> T:
    try:
        return call.parse(response.text if call.raw else response.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnexpectedResponseError(
            f"{call.spec.method} {call.spec.path}: unexpected response body "
            f"({type(exc).__name__}: {exc})",
            status_code=response.status_code,
        ) from None


def _transport_error(
    spec: RequestSpec, settings: Settings, exc: Exception, attempts: int
) -> TransportError:
    return TransportError(
        f"{spec.method} {settings.base_url}{spec.path} failed after {attempts} "
        f"attempt(s): {type(exc).__name__}: {exc}",
        attempts=attempts,
    )


# --- flows --------------------------------------------------------------------------


def execute(call: Call[T], settings: Settings) -> Flow[T]:
    """Send one call, retrying 429/502/503 and connection errors as the policy says."""
    spec = call.spec
    attempt = 0
    error: DromosError
    while True:
        outcome = yield spec
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return parse_success(call, outcome)
            error = error_from_response(outcome)
            retryable = outcome.status_code in RETRYABLE_STATUSES
            retry_after = error.retry_after
            cause: Exception | None = None
            reason = f"HTTP {outcome.status_code}"
        elif isinstance(outcome, httpx.TransportError):
            error = _transport_error(spec, settings, outcome, attempt + 1)
            retryable = isinstance(outcome, RETRYABLE_TRANSPORT_ERRORS)
            retry_after = None
            cause = outcome
            reason = type(outcome).__name__
        else:  # pragma: no cover - a driver bug
            raise RuntimeError(f"driver sent {outcome!r} in answer to a request")

        delay = (
            settings.retry.delay(attempt, retry_after=retry_after, jitter=random.random())  # noqa: S311 - jitter, not crypto
            if retryable
            else None
        )
        if delay is None:
            raise error from cause
        attempt += 1
        logger.info(
            "dromos: %s %s got %s, retry %d/%d in %.2fs",
            spec.method,
            spec.path,
            reason,
            attempt,
            settings.retry.retries,
            delay,
        )
        yield Sleep(delay)


def wait_for_active(
    connection_id: str,
    settings: Settings,
    *,
    timeout: float,
    poll_interval: float,
    max_poll_interval: float,
    clock: Callable[[], float] = time.monotonic,
) -> Flow[Connection]:
    """Poll ``check_connection`` until the connection is active.

    The interval starts at ``poll_interval`` and grows by half each poll up to
    ``max_poll_interval``; the last sleep is cut to end at the deadline, where one final
    poll is made. Raises :class:`ConnectionFailedError` for ``failed`` / ``revoked``,
    :class:`WaitTimeoutError` once ``timeout`` seconds have passed.
    """
    if timeout < 0 or poll_interval <= 0 or max_poll_interval <= 0:
        raise ValueError("timeout must be >= 0, poll intervals > 0")
    call = check_connection_call(connection_id)
    deadline = clock() + timeout
    interval = poll_interval
    while True:
        connection = yield from execute(call, settings)
        if connection.status == ConnectionStatus.ACTIVE:
            return connection
        if connection.status in (ConnectionStatus.FAILED, ConnectionStatus.REVOKED):
            raise ConnectionFailedError(connection)
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeoutError(connection_id, timeout, connection.status)
        yield Sleep(min(interval, remaining))
        interval = min(interval * 1.5, max(max_poll_interval, poll_interval))


__all__ = [
    "API_KEY_ENV",
    "DEFAULT_USER_AGENT",
    "Action",
    "Call",
    "Flow",
    "Outcome",
    "RequestSpec",
    "Settings",
    "Sleep",
    "build_request",
    "error_from_response",
    "execute",
    "make_settings",
    "proxy_error",
    "proxy_request",
    "wait_for_active",
]
