"""Every transition of a connection, in one place (Zulip's `do_*` shape).

    (new) ──connection_create──▶ pending ──connection_activate──▶ active
    pending ──connection_fail──▶ failed          (denied, bad callback, state expired)
    active ──connection_fail──▶ failed           (refresh answered invalid_grant, id_token changed)
    active ──connection_store_refreshed──▶ active (new tokens after a refresh)
    active ──connection_warn_expiring──▶ active  (connection.expiring: the refresh token ends soon)
    active ──connection_expire──▶ failed         (connection.expired: the refresh token ended)
    any ──connection_mark_revoked──▶ revoked

Each function is atomic, guards the status it expects (a row no longer in that status is
left alone and the function says so), writes its audit row and emits its event after
commit. Events are emitted from this module only.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from broker_app import crypto, events, metrics
from broker_app.audit import SYSTEM, Actor, audit_record
from broker_app.models import Connection
from broker_app.oauth.errors import safe_code
from broker_app.oauth.tokens import TokenSet
from broker_app.services.refresh_policy import next_proactive_attempt
from dromos.errors import ConnectionNotActive

logger = logging.getLogger(__name__)
Status = Connection.Status


def _emit_on_commit(connection_id: str, event: str) -> None:
    transaction.on_commit(lambda: events.connection_event(connection_id=connection_id, event=event))


def not_active(connection: Connection) -> ConnectionNotActive:
    """The 409 an agent gets for a connection that cannot serve tokens, saying what to do."""
    reconnect = connection.status in (Status.FAILED, Status.REVOKED)
    message = f"connection is {connection.status}"
    if connection.status == Status.FAILED:
        message += f" ({connection.error or 'failed'}): the user must reconnect"
    elif connection.status == Status.PENDING:
        message += ": the user has not completed consent yet"
    elif connection.status == Status.REVOKED:
        message += ": request a new connection"
    return ConnectionNotActive(message, status=connection.status, reconnect_required=reconnect)


def store_tokens(connection: Connection, tokens: TokenSet, *, keep_refresh_token: bool) -> list[str]:
    """Write a TokenSet into the row's encrypted fields (in memory); returns the fields changed.

    A response without a refresh token keeps the stored one (`keep_refresh_token`)."""
    now = timezone.now()
    connection.access_token_enc = crypto.encrypt(tokens.access_token, aad=connection.aad("access_token"))
    changed = ["access_token_enc", "token_type", "expires_at", "token_version", "updated_at"]
    if tokens.refresh_token:
        connection.refresh_token_enc = crypto.encrypt(tokens.refresh_token, aad=connection.aad("refresh_token"))
        changed.append("refresh_token_enc")
        if tokens.refresh_expires_in:
            connection.refresh_expires_at = now + timedelta(seconds=tokens.refresh_expires_in)
            connection.expiry_warned_at = None  # a new end: warn again before it
            changed += ["refresh_expires_at", "expiry_warned_at"]
    elif not keep_refresh_token:
        connection.refresh_token_enc = ""
        changed.append("refresh_token_enc")
    if tokens.id_token:
        connection.id_token_enc = crypto.encrypt(tokens.id_token, aad=connection.aad("id_token"))
        changed.append("id_token_enc")
    connection.token_type = tokens.token_type
    connection.expires_at = now + timedelta(seconds=tokens.expires_in) if tokens.expires_in else None
    connection.token_version += 1
    if tokens.scope is not None:
        connection.granted_scopes = list(tokens.scope)
        changed.append("granted_scopes")
    if tokens.metadata:
        connection.metadata = {**connection.metadata, **tokens.metadata}
        changed.append("metadata")
    return changed


def connection_create(*, connection: Connection, actor: Actor) -> None:
    """Insert a new pending connection (built by the consent flow) with its audit row."""
    with transaction.atomic():
        connection.save(force_insert=True)
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            actor=actor,
            action="connection.requested",
            detail={"provider": connection.provider.name, "scopes": connection.scopes},
        )
    metrics.CONNECTIONS_STARTED.labels(provider=connection.provider.name).inc()
    logger.info("connection requested", extra={"connection_id": connection.id, "provider": connection.provider.name})


def connection_activate(*, connection: Connection, tokens: TokenSet, account: dict[str, Any]) -> bool:
    """pending → active with the tokens of a completed consent. False when the row is no
    longer pending (another callback won)."""
    with transaction.atomic():
        locked = Connection.objects.select_for_update().get(pk=connection.pk)
        if locked.status != Status.PENDING:
            return False
        connection.token_version = locked.token_version
        store_tokens(connection, tokens, keep_refresh_token=False)
        if tokens.scope is None:
            connection.granted_scopes = list(connection.scopes)
        connection.account = account
        connection.status = Status.ACTIVE
        connection.activated_at = connection.last_refreshed_at = timezone.now()
        connection.pkce_verifier_enc = ""
        connection.nonce_digest = ""
        connection.error = connection.error_description = ""
        connection.save()
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            actor=SYSTEM,
            action="connection.activated",
            detail={"granted_scopes": connection.granted_scopes},
        )
        _emit_on_commit(connection.id, "connection.activated")
    metrics.CONNECTIONS_ACTIVATED.labels(provider=connection.provider.name).inc()
    logger.info("connection activated", extra={"connection_id": connection.id})
    return True


def connection_fail(
    *,
    connection: Connection,
    error: str,
    description: str = "",
    actor: Actor = SYSTEM,
    expected: tuple[str, ...] = (Status.PENDING,),
) -> bool:
    """pending (or, for a refresh, active) → failed, keeping the reason. False when the row
    was no longer in an expected status (nothing written, no event)."""
    code = safe_code(error)
    with transaction.atomic():
        updated = Connection.objects.filter(pk=connection.pk, status__in=expected).update(
            status=Status.FAILED,
            error=code,
            error_description=description[:512],
            pkce_verifier_enc="",
            next_refresh_attempt_at=None,
            updated_at=timezone.now(),
        )
        if updated:
            audit_record(
                connection_id=connection.id,
                workspace=connection.workspace,
                actor=actor,
                action="connection.failed",
                detail={"error": code},
            )
            _emit_on_commit(connection.id, "connection.failed")
    if not updated:
        return False
    connection.status, connection.error, connection.error_description = Status.FAILED, code, description[:512]
    connection.next_refresh_attempt_at = None
    metrics.CONNECTIONS_FAILED.labels(provider=connection.provider.name, reason=code).inc()
    logger.info("connection failed", extra={"connection_id": connection.id, "reason": code})
    return True


def connection_store_refreshed(
    *, connection: Connection, tokens: TokenSet, actor: Actor, idle_days: int | None = None
) -> None:
    """active → active with the tokens a refresh returned. The caller holds the row lock and
    has checked the status; the rotated refresh token is written in its transaction."""
    if connection.status != Status.ACTIVE:
        raise not_active(connection)
    recovered = connection.refresh_failures > 0
    with transaction.atomic():
        changed = store_tokens(connection, tokens, keep_refresh_token=True)
        connection.last_refreshed_at = timezone.now()
        connection.refresh_failures = 0
        connection.next_refresh_attempt_at = next_proactive_attempt(
            expires_at=connection.expires_at,
            refreshed_at=connection.last_refreshed_at,
            last_read_at=connection.last_read_at,
            idle_days=idle_days,
        )
        connection.save(update_fields=[*changed, "last_refreshed_at", "refresh_failures", "next_refresh_attempt_at"])
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            actor=actor,
            action="token.refreshed",
            detail={"rotated": bool(tokens.refresh_token)},
        )
        if recovered:
            _emit_on_commit(connection.id, "connection.refreshed_after_failure")
    logger.info("refreshed", extra={"connection_id": connection.id})


def connection_mark_revoked(*, connection: Connection, actor: Actor, provider_revoked: bool, kept: str) -> None:
    """any → revoked: wipe every token except (encrypted, never served) the one a deferred
    provider revocation still needs (`kept`: "refresh_token", "access_token" or "")."""
    with transaction.atomic():
        connection.status = Status.REVOKED
        connection.id_token_enc = connection.pkce_verifier_enc = ""
        if kept != "refresh_token":
            connection.refresh_token_enc = ""
        if kept != "access_token":
            connection.access_token_enc = ""
        connection.revoke_pending = not provider_revoked
        connection.state_digest = None
        connection.expires_at = None
        connection.save()
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            actor=actor,
            action="connection.revoked",
            detail={"provider_revoked": provider_revoked},
        )
        _emit_on_commit(connection.id, "connection.revoked")
    metrics.CONNECTIONS_REVOKED.labels(provider=connection.provider.name).inc()


def connection_warn_expiring(*, connection: Connection) -> bool:
    """Say once, per refresh-token end, that it is near (connection.expiring). False when
    already said, or the row is no longer active."""
    with transaction.atomic():
        updated = Connection.objects.filter(
            pk=connection.pk, status=Status.ACTIVE, expiry_warned_at__isnull=True, refresh_expires_at__isnull=False
        ).update(expiry_warned_at=timezone.now())
        if updated:
            audit_record(
                connection_id=connection.id,
                workspace=connection.workspace,
                actor=SYSTEM,
                action="connection.expiring",
                detail={"refresh_token_expires_at": connection.refresh_expires_at.isoformat()},
            )
            _emit_on_commit(connection.id, "connection.expiring")
    return bool(updated)


def connection_expire(*, connection: Connection) -> bool:
    """active → failed (error grant_expired) once the refresh token's end has passed; the
    event is connection.expired. False when the row was no longer active."""
    with transaction.atomic():
        updated = Connection.objects.filter(
            pk=connection.pk, status=Status.ACTIVE, refresh_expires_at__lte=timezone.now()
        ).update(
            status=Status.FAILED,
            error="grant_expired",
            error_description="the provider's refresh token reached its end; the user must reconnect",
            next_refresh_attempt_at=None,
            updated_at=timezone.now(),
        )
        if updated:
            audit_record(
                connection_id=connection.id,
                workspace=connection.workspace,
                actor=SYSTEM,
                action="connection.expired",
                detail={"error": "grant_expired"},
            )
            _emit_on_commit(connection.id, "connection.expired")
    if updated:
        metrics.CONNECTIONS_FAILED.labels(provider=connection.provider.name, reason="grant_expired").inc()
        logger.info("connection expired", extra={"connection_id": connection.id})
    return bool(updated)
