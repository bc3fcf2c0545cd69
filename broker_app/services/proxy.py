"""The broker's side of the gateway's API proxy (issue 15): a credential read that also says
where the provider's API lives and how the token is injected, a refresh that happens only
when the rejected token is still the stored one, and the "needs attention" flag.

Every credential read is a token read in the audit trail (actor `proxy:apikey:<prefix>`);
the gateway never reads token tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from broker_app import metrics
from broker_app.audit import Actor, audit_record
from broker_app.models import Connection
from broker_app.providers.registry import resolve
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import connection_get
from broker_app.services.tokens import _fresh, _not_active, _view, token_refresh
from dromos.errors import ApiError, ProviderUnavailable

DEFAULT_AUTH_HEADER = "Authorization"
DEFAULT_AUTH_FORMAT = "Bearer {token}"
ATTENTION_REJECTED = "provider_rejected_token"
# A token this close to its expiry is refreshed before the proxy is given it.
EXPIRY_MARGIN_SECONDS = 60
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


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
        }


def _credential(connection: Connection) -> ProxyCredential:
    try:
        spec, _hooks = resolve(connection.provider, connection.params)
    except ProviderConfigError as exc:
        raise ProxyNotConfigured(f"provider {connection.provider.name} is not usable: {exc}") from None
    if not spec.api_base_url:
        raise ProxyNotConfigured(
            f"provider {spec.name} has no api_base_url; set it with "
            "`manage.py provider upsert --name NAME --api-base-url URL`"
        )
    header = spec.api_auth.get("header", DEFAULT_AUTH_HEADER)
    template = spec.api_auth.get("format", DEFAULT_AUTH_FORMAT)
    if not _HEADER_NAME.fullmatch(header) or "{token}" not in template:
        raise ProxyNotConfigured(f"provider {spec.name} has an invalid api_auth")
    hosts = [urlsplit(spec.api_base_url).hostname or ""]
    hosts += [host.lower() for host in spec.api_hosts if host and host.lower() not in hosts]
    view = _view(connection)
    return ProxyCredential(
        connection_id=connection.id,
        provider_name=spec.name,
        token_version=connection.token_version,
        access_token=view.access_token,
        expires_at=connection.expires_at,
        api_base_url=spec.api_base_url,
        api_hosts=hosts,
        auth_header=header,
        auth_format=template,
    )


def proxy_credential_read(*, connection_id: str, workspace: str, actor: Actor) -> ProxyCredential:
    """The token the proxy injects and where it may send it; an audited token read. Raises
    NotFound (unknown or another workspace's), ConnectionNotActive (409),
    ProxyNotConfigured (409: the provider has no API base URL)."""
    connection = connection_get(connection_id=connection_id, workspace=workspace)
    if connection.status != Connection.Status.ACTIVE:
        raise _not_active(connection)
    if connection.refresh_token_enc and not _fresh(connection, EXPIRY_MARGIN_SECONDS):
        # Refreshed before it expires rather than after the provider's 401 (as auto_refresh).
        try:
            token_refresh(
                connection_id=connection.id,
                workspace=workspace,
                actor=actor,
                force=False,
                min_ttl=EXPIRY_MARGIN_SECONDS,
            )
        except ProviderUnavailable:
            if connection.expires_at is not None and connection.expires_at <= timezone.now():
                raise
        connection = connection_get(connection_id=connection_id, workspace=workspace)
    credential = _credential(connection)
    audit_record(
        connection_id=connection.id,
        workspace=connection.workspace,
        actor=actor,
        action="token.read",
        detail={"via": "proxy"},
    )
    metrics.TOKEN_READS.labels(provider=connection.provider.name).inc()
    return credential


def proxy_token_refresh(*, connection_id: str, workspace: str, actor: Actor, stale_version: int) -> ProxyCredential:
    """The provider answered 401 to the token of `stale_version`: refresh unless another
    caller already did (single-flight and coalesced by token_refresh), and return the
    current credential. Errors as token_refresh (409 after invalid_grant, 503 transient)."""
    token_refresh(connection_id=connection_id, workspace=workspace, actor=actor, if_version=stale_version)
    connection = connection_get(connection_id=connection_id, workspace=workspace)
    if connection.attention and connection.token_version != stale_version:
        Connection.objects.filter(pk=connection.pk, token_version=connection.token_version).update(attention="")
    return _credential(connection)


@transaction.atomic
def connection_flag_attention(*, connection_id: str, workspace: str, actor: Actor, token_version: int) -> Connection:
    """The provider refused the token of `token_version` even after a refresh: the grant
    works for refreshing but not for the API (a missing scope, a disabled account …). Not a
    failure, so the connection stays active; check-connection shows the warning until a
    later refresh stores newer tokens."""
    connection = connection_get(connection_id=connection_id, workspace=workspace)
    locked = Connection.objects.select_for_update().get(pk=connection.pk)
    if locked.status == Connection.Status.ACTIVE and locked.token_version == token_version:
        if locked.attention != ATTENTION_REJECTED:
            locked.attention = ATTENTION_REJECTED
            locked.save(update_fields=["attention", "updated_at"])
            audit_record(
                connection_id=locked.id,
                workspace=locked.workspace,
                actor=actor,
                action="connection.attention",
                detail={"reason": ATTENTION_REJECTED},
            )
    return locked
