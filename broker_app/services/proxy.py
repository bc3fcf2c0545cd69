"""The broker's side of the gateway's API proxy (issue 15): a credential read that also says
where the provider's API lives and how the credential is injected, a refresh that happens
only when the rejected token is still the stored one, and the "needs attention" flag.

How a credential is injected is named by its kind (`_injection`; the gateway's
`gateway_app.proxy.injection` applies it):

- `oauth`: an access token (any OAuth grant) in the template's `api_auth` header and format
  (default `Authorization: Bearer {token}`);
- `api_key_header`: a static API key in `credential_header` with `credential_format`
  (`{api_key}` filled: `x-api-key: {api_key}`, `Authorization: Token token={api_key}` …);
- `api_key_query`: a static API key as the query parameter `credential_query_param`;
- `basic`: a static login, `Authorization: Basic base64(username:password)`.

Every credential read is a token read in the audit trail (actor `proxy:apikey:<prefix>`);
the gateway never reads token tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from django.utils import timezone

from broker_app import metrics
from broker_app.audit import Actor, audit_record
from broker_app.models import Connection
from broker_app.providers.registry import resolve, resolve_machine, resolve_static
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import connection_get
from broker_app.services.lifecycle import not_active
from broker_app.services.refresh import token_refresh_auto, token_refresh_if_version
from broker_app.services.refresh_policy import fresh, renewable
from broker_app.services.token_view import token_view
from dromos.errors import ApiError, NotFound, ProviderUnavailable
from dromos.wire import MACHINE_FLOWS

DEFAULT_AUTH_HEADER = "Authorization"
DEFAULT_AUTH_FORMAT = "Bearer {token}"
# A token this close to its expiry is refreshed before the proxy is given it.
EXPIRY_MARGIN_SECONDS = 60
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_QUERY_PARAM = re.compile(r"^[A-Za-z0-9_.~-]{1,64}$")
# Headers a template may never set through api_headers (the proxy sets or drops them itself).
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "cookie"})
STATIC_TOKEN_TYPES = ("api_key", "basic")
_METADATA = re.compile(r"^\{metadata\.([A-Za-z_][A-Za-z0-9_]*)\}")


class ProxyNotConfigured(ApiError):
    status_code, code = 409, "proxy_not_configured"


@dataclass(frozen=True)
class ProxyCredential:
    connection_id: str
    provider_name: str
    token_version: int
    access_token: str = field(repr=False)
    expires_at: datetime | None
    api_base_url: str
    api_hosts: list[str]
    auth_header: str
    auth_format: str
    kind: str = "oauth"  # oauth | api_key_header | api_key_query | basic (module docstring)
    auth_query_param: str = ""
    api_headers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "connection_id": self.connection_id,
            "provider_name": self.provider_name,
            "token_version": self.token_version,
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "api_base_url": self.api_base_url,
            "api_hosts": self.api_hosts,
            "auth_header": self.auth_header,
            "auth_format": self.auth_format,
            "kind": self.kind,
            "auth_query_param": self.auth_query_param,
            "api_headers": self.api_headers,
        }


def _credential(connection: Connection) -> ProxyCredential:
    try:
        if connection.token_type in STATIC_TOKEN_TYPES:  # no OAuth endpoints to resolve
            spec = resolve_static(connection.provider, connection.params)
        else:
            # A machine connection's provider may have no authorize endpoint (issue 18).
            resolver = resolve_machine if connection.flow in MACHINE_FLOWS else resolve
            spec, _hooks = resolver(connection.provider, connection.params)
    except ProviderConfigError as exc:
        raise ProxyNotConfigured(f"provider {connection.provider.name} is not usable: {exc}") from None
    base = _base_url(spec.api_base_url, connection)
    if not base:
        raise ProxyNotConfigured(
            f"provider {spec.name} has no api_base_url; set it with "
            "`manage.py provider upsert --name NAME --api-base-url URL`"
        )
    kind, header, template, query_param = _injection(spec, connection)
    api_headers = {str(k): str(v) for k, v in (spec.api_headers or {}).items()}
    if any(
        not _HEADER_NAME.fullmatch(k) or k.lower() in _RESERVED_HEADERS or not _printable(v)
        for k, v in api_headers.items()
    ):
        raise ProxyNotConfigured(f"provider {spec.name} has an invalid api_headers")
    hosts = [(urlsplit(base).hostname or "").lower()]
    if not _host_allowed(hosts[0], spec.api_hosts, spec.api_base_url):
        raise ProxyNotConfigured(f"provider {spec.name}: the connection's API host is not among its api_hosts")
    # Dromos-Proxy-Host names one of these exactly; a "*." pattern pins only the base URL's host.
    hosts += [host.lower() for host in spec.api_hosts if host and "*" not in host and host.lower() not in hosts]
    view = token_view(connection)
    return ProxyCredential(
        connection_id=connection.id,
        provider_name=spec.name,
        token_version=connection.token_version,
        access_token=view.access_token,
        expires_at=connection.expires_at,
        api_base_url=base,
        api_hosts=hosts,
        auth_header=header,
        auth_format=template,
        kind=kind,
        auth_query_param=query_param,
        api_headers=api_headers,
    )


def _injection(spec, connection: Connection) -> tuple[str, str, str, str]:
    """(kind, header, format, query parameter): how the gateway injects this connection's
    credential, exactly as its template says (module docstring). A new kind of credential
    gets its branch here and in gateway_app.proxy.injection."""
    if connection.token_type == "basic":
        return "basic", "Authorization", "Basic {token}", ""
    if connection.token_type == "api_key":
        if spec.credential_query_param:
            if not _QUERY_PARAM.fullmatch(spec.credential_query_param):
                raise ProxyNotConfigured(f"provider {spec.name} has an invalid credential_query_param")
            return "api_key_query", "", "", spec.credential_query_param
        header, template = spec.credential_header, spec.credential_format
        if not _HEADER_NAME.fullmatch(header) or "{api_key}" not in template or not _printable(template):
            raise ProxyNotConfigured(f"provider {spec.name} has an invalid credential_header / credential_format")
        return "api_key_header", header, template, ""
    header = spec.api_auth.get("header", DEFAULT_AUTH_HEADER)
    template = spec.api_auth.get("format", DEFAULT_AUTH_FORMAT)
    if not _HEADER_NAME.fullmatch(header) or "{token}" not in template or not _printable(template):
        raise ProxyNotConfigured(f"provider {spec.name} has an invalid api_auth")
    return "oauth", header, template, ""


def _printable(value: str) -> bool:
    """A header value the proxy can send: printable ASCII (spaces allowed), nothing else."""
    return all(" " <= c <= "~" for c in value)


def _base_url(template: str, connection: Connection) -> str:
    """The catalog's api_base_url with a `{metadata.KEY}` prefix read from the connection
    (Salesforce's instance_url); "" when the connection has no such value."""
    match = _METADATA.match(template)
    if match is None:
        return template
    value = (connection.metadata or {}).get(match.group(1))
    if not isinstance(value, str) or not value.startswith("https://"):
        return ""
    return value.rstrip("/") + template[match.end() :]


def _host_allowed(host: str, patterns: tuple[str, ...], template: str) -> bool:
    """A base URL taken from metadata must name one of api_hosts ("*." allows subdomains)."""
    if not _METADATA.match(template):
        return True
    for pattern in patterns:
        pattern = pattern.lower()
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def proxy_credential_read(*, connection_id: str, workspace: str, actor: Actor) -> ProxyCredential:
    """The token the proxy injects and where it may send it; an audited token read. Raises
    NotFound (unknown or another workspace's), ConnectionNotActive (409),
    ProxyNotConfigured (409: the provider has no API base URL)."""
    connection = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    if connection.status != Connection.Status.ACTIVE:
        raise not_active(connection)
    if _refresh_due(connection):
        # Refreshed before it expires rather than after the provider's 401 (as auto_refresh).
        try:
            token_refresh_auto(
                connection_id=connection.id, workspace=workspace, actor=actor, min_ttl=EXPIRY_MARGIN_SECONDS
            )
        except ProviderUnavailable:
            if connection.expires_at is not None and connection.expires_at <= timezone.now():
                raise
        connection = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    credential = _credential(connection)
    _audited(connection, actor)
    return credential


def proxy_credential_stored(*, connection_id: str, workspace: str, actor: Actor) -> ProxyCredential | None:
    """proxy_credential_read's common case only (broker_app/fast_token.py): an active
    connection of the actor's workspace and environment, no refresh due, a provider the proxy
    can use: the same credential and audit row. None, before anything is written, for every
    other case: proxy_credential_read serves those, with their errors."""
    try:
        connection = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    except NotFound:
        return None
    if connection.status != Connection.Status.ACTIVE or _refresh_due(connection):
        return None
    try:
        credential = _credential(connection)
    except ProxyNotConfigured:
        return None
    _audited(connection, actor)
    return credential


def _refresh_due(connection: Connection) -> bool:
    return renewable(connection) and not fresh(connection.expires_at, EXPIRY_MARGIN_SECONDS)


def _audited(connection: Connection, actor: Actor) -> None:
    audit_record(
        connection_id=connection.id,
        workspace=connection.workspace,
        environment=connection.environment,
        actor=actor,
        action="token.read",
        detail={"via": "proxy"},
    )
    metrics.TOKEN_READS.labels(provider=connection.provider.name).inc()


def proxy_token_refresh(*, connection_id: str, workspace: str, actor: Actor, stale_version: int) -> ProxyCredential:
    """The provider answered 401 to the token of `stale_version`: refresh unless another
    caller already did (single flight, refresh.token_refresh_if_version), and return the
    current credential. Errors as token_refresh (409 after invalid_grant, 503 transient)."""
    token_refresh_if_version(connection_id=connection_id, workspace=workspace, actor=actor, token_version=stale_version)
    return _credential(connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment))
