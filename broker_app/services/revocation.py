"""Revoking a connection: at the provider where possible (RFC 7009), always here."""

from __future__ import annotations

import logging

from django.db import transaction

from broker_app import crypto
from broker_app.audit import Actor
from broker_app.models import Connection
from broker_app.oauth import client
from broker_app.oauth.errors import OAuthError, TransientOAuthError
from broker_app.providers.registry import resolve, resolve_machine
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import connection_get
from broker_app.services.lifecycle import connection_mark_revoked
from broker_app.services.refresh import lock_row
from dromos.wire import MACHINE_FLOWS

logger = logging.getLogger(__name__)


def connection_revoke(*, connection_id: str, workspace: str | None, actor: Actor) -> Connection:
    """Revoke at the provider where possible, wipe the stored tokens whatever the provider
    says, mark the connection revoked. A failed provider revocation is retried later
    (`revocation_retry`, on the beat schedule)."""
    connection = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    tokens: list[tuple[str, str]] = []
    with transaction.atomic():
        locked = lock_row(connection.id)
        if locked.status == Connection.Status.REVOKED:
            return locked
        for field_name, hint in (("refresh_token_enc", "refresh_token"), ("access_token_enc", "access_token")):
            value = getattr(locked, field_name)
            if value:
                try:
                    tokens.append((hint, crypto.decrypt(value, aad=locked.aad(hint)) or ""))
                except crypto.DecryptionError:
                    pass
        revoke_ok = _revoke_at_provider(locked, tokens)
        connection_mark_revoked(
            connection=locked, actor=actor, provider_revoked=revoke_ok, kept="" if revoke_ok else tokens[0][0]
        )
    return locked


def _revoke_at_provider(connection: Connection, tokens: list[tuple[str, str]]) -> bool:
    """True when nothing is left to revoke at the provider."""
    if not tokens:
        return True
    try:
        resolver = resolve_machine if connection.flow in MACHINE_FLOWS else resolve
        spec, _hooks = resolver(connection.provider, connection.params)
    except ProviderConfigError:
        return False
    if not spec.revocation_url:
        return True  # nothing we can do at the provider; tokens are wiped here
    # Revoking the refresh token revokes the grant (RFC 7009 §2.1); some providers (GitHub,
    # Dropbox, Slack) revoke by the access token instead: the catalog says which.
    hint, token = next(((h, t) for h, t in tokens if h == spec.revocation_token), tokens[0])
    try:
        client.revoke(spec, token=token, token_type_hint=hint)
        return True
    except TransientOAuthError:
        logger.warning("revocation deferred", extra={"connection_id": connection.id})
        return False
    except OAuthError as exc:
        logger.warning("revocation refused", extra={"connection_id": connection.id, "reason": exc.error})
        return True


def revocation_retry(*, connection_id: str) -> bool:
    """Retry a deferred provider revocation; wipe the kept token once it succeeds."""
    with transaction.atomic():
        connection = lock_row(connection_id)
        if not connection.revoke_pending:
            return True
        hint = "refresh_token" if connection.refresh_token_enc else "access_token"
        token = crypto.decrypt(getattr(connection, f"{hint}_enc"), aad=connection.aad(hint))
        done = _revoke_at_provider(connection, [(hint, token)] if token else [])
        if done:
            connection.revoke_pending = False
            connection.refresh_token_enc = connection.access_token_enc = ""
            connection.save(update_fields=["revoke_pending", "refresh_token_enc", "access_token_enc", "updated_at"])
        return done
