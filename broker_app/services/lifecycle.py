"""Every transition of a connection, in one place (Zulip's `do_*` shape).

    (new) ──connection_create──▶ pending ──connection_activate──▶ active
    pending ──connection_fail──▶ failed          (denied, bad callback, state expired,
                                                  device code expired or refused)
    active ──connection_fail──▶ failed           (refresh answered invalid_grant, id_token changed)
    active ──connection_store_refreshed──▶ active (new tokens after a refresh)
    active ──connection_warn_expiring──▶ active  (connection.expiring: the refresh token ends soon)
    active ──connection_expire──▶ failed         (connection.expired: the refresh token ended)
    (new) ──connection_create, connection_activate──▶ active  (a machine grant's first token, issue 18)
    active ──connection_fail──▶ failed           (a machine grant refused: wrong secret or key)
    any ──connection_mark_revoked──▶ revoked
    active|failed ──connection_reconnect_start──▶ unchanged (a pending ConnectAttempt holds the flow)
    active|failed ──connection_reconnect_complete──▶ active (same account: the new grant replaces the old)
    active|failed ──connection_reconnect_reject──▶ unchanged (account_mismatch, denied …: audited only)

A connection made through a connect session finishes its session in the same transaction
(`connect_session.completed` when it activates or reconnects, failed otherwise).

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
from broker_app.models import ConnectAttempt, Connection, ConnectSession
from broker_app.oauth.errors import safe_code
from broker_app.oauth.tokens import TokenSet
from broker_app.services.refresh_policy import next_proactive_attempt
from dromos.errors import ConnectionNotActive, NotFound

logger = logging.getLogger(__name__)
Status = Connection.Status


def _emit_on_commit(connection_id: str, event: str) -> None:
    transaction.on_commit(lambda: events.connection_event(connection_id=connection_id, event=event))


def _finish_session(session_id: str | None, *, connection_id: str, error: str = "") -> None:
    """started → completed (no error) or failed; inside the caller's transaction."""
    if not session_id:
        return
    status = ConnectSession.Status.FAILED if error else ConnectSession.Status.COMPLETED
    finished = ConnectSession.objects.filter(pk=session_id, status=ConnectSession.Status.STARTED).update(
        status=status, error=error, completed_at=timezone.now()
    )
    if finished and not error:
        _emit_on_commit(connection_id, "connect_session.completed")


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
            environment=connection.environment,
            actor=actor,
            action="connection.requested",
            detail={"provider": connection.provider.name, "scopes": connection.scopes},
        )
    metrics.CONNECTIONS_STARTED.labels(provider=connection.provider.name).inc()
    logger.info("connection requested", extra={"connection_id": connection.id, "provider": connection.provider.name})


def connection_create_static(*, connection: Connection, credential: str, actor: Actor) -> None:
    """(new) → active: a connection made with a static credential (an API key, or a login
    as JSON), stored encrypted like a token; `connection.token_type` says which kind."""
    with transaction.atomic():
        connection.status = Status.ACTIVE
        connection.access_token_enc = crypto.encrypt(credential, aad=connection.aad("access_token"))
        connection.token_version = 1
        connection.activated_at = connection.last_refreshed_at = timezone.now()
        connection.save(force_insert=True)
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=actor,
            action="connection.requested",
            detail={"provider": connection.provider.name, "credential": connection.token_type},
        )
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=actor,
            action="connection.activated",
            detail={"credential": connection.token_type},
        )
        _emit_on_commit(connection.id, "connection.activated")
    metrics.CONNECTIONS_ACTIVATED.labels(provider=connection.provider.name).inc()
    logger.info("static connection created", extra={"connection_id": connection.id})


def connection_replace_credential(*, connection: Connection, credential: str, token_type: str, actor: Actor) -> None:
    """active (or failed) → active with a new static credential, in place. The caller holds
    the row lock."""
    if connection.status not in (Status.ACTIVE, Status.FAILED):
        raise not_active(connection)
    reactivated = connection.status == Status.FAILED
    with transaction.atomic():
        connection.access_token_enc = crypto.encrypt(credential, aad=connection.aad("access_token"))
        connection.token_type = token_type
        connection.token_version += 1
        connection.status = Status.ACTIVE
        connection.error = connection.error_description = ""
        connection.attention = ""  # a new credential: the proxy's "provider rejected" flag no longer applies
        connection.last_refreshed_at = timezone.now()
        connection.save()
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=actor,
            action="credentials.replaced",
            detail={"credential": token_type},
        )
        if reactivated:
            _emit_on_commit(connection.id, "connection.activated")
    logger.info("credentials replaced", extra={"connection_id": connection.id})


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
        connection.pkce_verifier_enc = connection.device_code_enc = ""
        connection.device_next_poll_at = None
        connection.nonce_digest = ""
        connection.error = connection.error_description = ""
        connection.save()
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=SYSTEM,
            action="connection.activated",
            detail={"granted_scopes": connection.granted_scopes},
        )
        _emit_on_commit(connection.id, "connection.activated")
        _finish_session(connection.connect_session_id, connection_id=connection.id)
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
            device_code_enc="",
            grant_secret_enc="",  # a failed machine connection never asks again: its secrets go
            device_next_poll_at=None,
            next_refresh_attempt_at=None,
            updated_at=timezone.now(),
        )
        if updated:
            audit_record(
                connection_id=connection.id,
                workspace=connection.workspace,
                environment=connection.environment,
                actor=actor,
                action="connection.failed",
                detail={"error": code},
            )
            _emit_on_commit(connection.id, "connection.failed")
            _finish_session(connection.connect_session_id, connection_id=connection.id, error=code)
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
        connection.attention = ""  # newer tokens: the proxy's flag (if any) no longer applies
        connection.save(
            update_fields=[*changed, "last_refreshed_at", "refresh_failures", "next_refresh_attempt_at", "attention"]
        )
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=actor,
            action="token.refreshed",
            detail={"rotated": bool(tokens.refresh_token)},
        )
        if recovered:
            _emit_on_commit(connection.id, "connection.refreshed_after_failure")
    logger.info("refreshed", extra={"connection_id": connection.id})


ATTENTION_REJECTED = "provider_rejected_token"


def connection_flag_attention(*, connection_id: str, workspace: str, actor: Actor, token_version: int) -> Connection:
    """active → active, flagged: the provider refused the token of `token_version` through
    the API proxy even after a refresh (a missing scope, a disabled account …). Not a
    failure; check-connection shows the warning until a refresh stores newer tokens (which
    clears it). A flag for an older version than the stored one is ignored."""
    with transaction.atomic():
        connection = (
            Connection.objects.select_for_update()
            .filter(id=connection_id, workspace=workspace, environment=actor.environment)
            .first()
        )
        if connection is None:
            raise NotFound("connection not found")
        if (
            connection.status == Status.ACTIVE
            and connection.token_version == token_version
            and connection.attention != ATTENTION_REJECTED
        ):
            connection.attention = ATTENTION_REJECTED
            connection.save(update_fields=["attention", "updated_at"])
            audit_record(
                connection_id=connection.id,
                workspace=connection.workspace,
                environment=connection.environment,
                actor=actor,
                action="connection.attention",
                detail={"reason": ATTENTION_REJECTED},
            )
    return connection


def connection_mark_revoked(*, connection: Connection, actor: Actor, provider_revoked: bool, kept: str) -> None:
    """any → revoked: wipe every token except (encrypted, never served) the one a deferred
    provider revocation still needs (`kept`: "refresh_token", "access_token" or "")."""
    with transaction.atomic():
        connection.status = Status.REVOKED
        connection.id_token_enc = connection.pkce_verifier_enc = connection.device_code_enc = ""
        connection.grant_secret_enc = ""  # a machine connection's own client secret or key
        connection.device_next_poll_at = None
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
            environment=connection.environment,
            actor=actor,
            action="connection.revoked",
            detail={"provider_revoked": provider_revoked},
        )
        _emit_on_commit(connection.id, "connection.revoked")
    metrics.CONNECTIONS_REVOKED.labels(provider=connection.provider.name).inc()


RECONNECTABLE = (Status.ACTIVE, Status.FAILED)


def connection_reconnect_start(*, attempt: ConnectAttempt, actor: Actor) -> None:
    """Record a pending reconnect of an active or failed connection. The connection itself
    is not touched: its status and tokens stay as they are until the callback."""
    connection = attempt.connection
    with transaction.atomic():
        locked = Connection.objects.select_for_update().get(pk=connection.pk)
        if locked.status not in RECONNECTABLE:
            raise not_active(locked)
        attempt.save(force_insert=True)
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=actor,
            action="connection.reconnect_requested",
            detail={"scopes": attempt.scopes, "connect_session": attempt.connect_session_id},
        )
    logger.info("reconnect requested", extra={"connection_id": connection.id})


def connection_reconnect_complete(*, attempt: ConnectAttempt, tokens: TokenSet, account: dict[str, Any]) -> bool:
    """active|failed → active with the new grant of the same account (the caller has
    checked the account). The requested scopes become the connection's; a response without
    a refresh token keeps the stored one. False when the connection can no longer be
    reconnected (revoked meanwhile): nothing is written but the attempt's failure."""
    with transaction.atomic():
        connection = Connection.objects.select_for_update().select_related("provider").get(pk=attempt.connection_id)
        if connection.status not in RECONNECTABLE:
            _attempt_failed(attempt, connection, "connection_not_reconnectable")
            return False
        previous = connection.status
        changed = store_tokens(connection, tokens, keep_refresh_token=True)
        connection.scopes = list(attempt.scopes)
        if tokens.scope is None:
            connection.granted_scopes = list(dict.fromkeys([*connection.granted_scopes, *attempt.scopes]))
        connection.account = {**connection.account, **account}
        connection.status = Status.ACTIVE
        connection.last_refreshed_at = timezone.now()
        connection.activated_at = connection.activated_at or connection.last_refreshed_at
        connection.error = connection.error_description = ""
        connection.refresh_failures = 0
        connection.next_refresh_attempt_at = next_proactive_attempt(
            expires_at=connection.expires_at, refreshed_at=connection.last_refreshed_at
        )
        connection.save(
            update_fields=[
                *changed,
                "scopes",
                "granted_scopes",
                "account",
                "status",
                "last_refreshed_at",
                "activated_at",
                "error",
                "error_description",
                "refresh_failures",
                "next_refresh_attempt_at",
            ]
        )
        ConnectAttempt.objects.filter(pk=attempt.pk).update(
            status=ConnectAttempt.Status.COMPLETED, pkce_verifier_enc="", nonce_digest="", finished_at=timezone.now()
        )
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=SYSTEM,
            action="connection.reconnected",
            detail={"previous_status": previous, "granted_scopes": connection.granted_scopes},
        )
        _emit_on_commit(connection.id, "connection.reconnected")
        _finish_session(attempt.connect_session_id, connection_id=connection.id)
    logger.info("connection reconnected", extra={"connection_id": connection.id})
    return True


def _attempt_failed(attempt: ConnectAttempt, connection: Connection, code: str) -> None:
    ConnectAttempt.objects.filter(pk=attempt.pk).update(
        status=ConnectAttempt.Status.FAILED,
        error=code,
        pkce_verifier_enc="",
        nonce_digest="",
        finished_at=timezone.now(),
    )
    audit_record(
        connection_id=connection.id,
        workspace=connection.workspace,
        environment=connection.environment,
        actor=SYSTEM,
        action="connection.reconnect_failed",
        detail={"error": code},
    )
    _finish_session(attempt.connect_session_id, connection_id=connection.id, error=code)


def connection_reconnect_reject(*, attempt: ConnectAttempt, error: str) -> None:
    """A reconnect that must change nothing (another account, denied consent, bad callback):
    the attempt fails and the audit log says why; the connection and its tokens are untouched."""
    code = safe_code(error)
    with transaction.atomic():
        _attempt_failed(attempt, attempt.connection, code)
    logger.info("reconnect refused", extra={"connection_id": attempt.connection_id, "reason": code})


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
                environment=connection.environment,
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
                environment=connection.environment,
                actor=SYSTEM,
                action="connection.expired",
                detail={"error": "grant_expired"},
            )
            _emit_on_commit(connection.id, "connection.expired")
    if updated:
        metrics.CONNECTIONS_FAILED.labels(provider=connection.provider.name, reason="grant_expired").inc()
        logger.info("connection expired", extra={"connection_id": connection.id})
    return bool(updated)
