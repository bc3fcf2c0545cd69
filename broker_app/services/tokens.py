"""Reading, refreshing and revoking tokens.

Every refresh path (gateway refresh and auto_refresh, the broker's own refresh endpoint,
the admin action, the sweep task and `manage.py refresh_due`) goes through `_refresh`.

Single-flight per connection, across processes and machines: the provider call runs while
holding the connection's PostgreSQL row lock (`SELECT … FOR UPDATE`). Waiters are bounded
by `lock_timeout`; once they get the lock they compare `token_version` with what they read
before waiting and, when it moved, return the tokens the holder stored instead of calling
the provider. A forced refresh that arrives just after another one finished
(COALESCE_SECONDS) returns that result too.

Rotation safety: the rotated refresh token is written in the transaction that releases the
lock, so no caller can ever present the old one after the provider rotated it; a response
without a refresh token keeps the stored one. `invalid_grant` re-reads the row: a refresh
token that changed meanwhile means a lost race (the stored tokens are used), otherwise the
connection fails and the user must reconnect. A refreshed id_token must keep iss, sub, aud.

Transient failures (5xx, timeout, connection error, 429) never touch the tokens; they only
move `next_refresh_attempt_at` out by an exponential backoff with jitter, which the sweep
honours, and they never fail a connection.

A process that dies mid-refresh drops its database session and, with it, the lock. A process
that hangs loses its session after `idle_in_transaction_session_timeout` (REFRESH_HOLD_SECONDS),
so no lock is held forever.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, OperationalError, transaction
from django.db import connection as db_connection
from django.utils import timezone

from broker_app import crypto, metrics
from broker_app.audit import Actor, audit_record
from broker_app.models import Connection
from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, OAuthError, PermanentOAuthError, TransientOAuthError
from broker_app.providers.registry import resolve
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import connection_for_token, connection_get
from broker_app.services.connect import _emit, store_tokens
from dromos.errors import ApiError, ConnectionNotActive, NotFound, ProviderError, ProviderUnavailable

logger = logging.getLogger(__name__)

# A forced refresh this soon after the last one returns that result: callers that arrive
# a moment apart (queued behind each other in a web server) still cause one provider refresh.
COALESCE_SECONDS = 5
SWEEP_ACTOR = Actor("system:refresh-sweep")
_LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class TokenView:
    connection_id: str
    provider_name: str
    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scopes: list[str]
    id_token: str | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        body = {
            "access_token": self.access_token,
            "token_type": self.token_type or "Bearer",
            "expires_at": self.expires_at,
            "scopes": self.scopes,
            "provider_name": self.provider_name,
            "connection_id": self.connection_id,
        }
        if self.id_token:
            body["id_token"] = self.id_token
        return body


class RefreshNotSupported(ApiError):
    status_code, code = 409, "refresh_not_supported"


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh attempt did. `outcome` is one of metrics.REFRESH_OUTCOME_HELP's names
    (or not_active / no_refresh_token); `retry_after` is set for the ones to retry later."""

    outcome: str
    retry_after: int | None = None


def _view(connection: Connection) -> TokenView:
    return TokenView(
        connection_id=connection.id,
        provider_name=connection.provider.name,
        access_token=crypto.decrypt(connection.access_token_enc, aad=connection.aad("access_token")) or "",
        token_type=connection.token_type or "Bearer",
        expires_at=connection.expires_at,
        scopes=connection.granted_scopes or connection.scopes,
        id_token=crypto.decrypt(connection.id_token_enc, aad=connection.aad("id_token")),
    )


def _not_active(connection: Connection) -> ConnectionNotActive:
    reconnect = connection.status in (Connection.Status.FAILED, Connection.Status.REVOKED)
    message = f"connection is {connection.status}"
    if connection.status == Connection.Status.FAILED:
        message += f" ({connection.error or 'failed'}): the user must reconnect"
    elif connection.status == Connection.Status.PENDING:
        message += ": the user has not completed consent yet"
    elif connection.status == Connection.Status.REVOKED:
        message += ": request a new connection"
    return ConnectionNotActive(message, status=connection.status, reconnect_required=reconnect)


def _fresh(connection: Connection, min_ttl: int) -> bool:
    return connection.expires_at is None or connection.expires_at - timezone.now() > timedelta(seconds=min_ttl)


def refresh_lead(*, expires_at: datetime, refreshed_at: datetime | None, window_seconds: int) -> timedelta:
    """How long before expiry the proactive refresh runs: the sweep window, or half the
    token's lifetime when that is shorter, so a short-lived token is not refreshed again on
    every sweep."""
    lead = timedelta(seconds=window_seconds)
    if refreshed_at is not None and expires_at > refreshed_at:
        lead = min(lead, (expires_at - refreshed_at) / 2)
    return lead


def proactive_due(connection: Connection, *, window_seconds: int | None = None) -> bool:
    """Whether the sweep should refresh this connection now (tokens without expiry: never)."""
    if connection.expires_at is None:
        return False
    window = settings.REFRESH_SWEEP_WINDOW_SECONDS if window_seconds is None else window_seconds
    lead = refresh_lead(
        expires_at=connection.expires_at, refreshed_at=connection.last_refreshed_at, window_seconds=window
    )
    return connection.expires_at - timezone.now() <= lead


def _next_proactive_attempt(connection: Connection) -> datetime | None:
    if connection.expires_at is None:
        return None
    return connection.expires_at - refresh_lead(
        expires_at=connection.expires_at,
        refreshed_at=connection.last_refreshed_at,
        window_seconds=settings.REFRESH_SWEEP_WINDOW_SECONDS,
    )


def token_read(
    *, connection_id: str, workspace: str | None, actor: Actor, auto_refresh: bool = False, min_ttl: int = 60
) -> TokenView:
    """The connection's current token; with auto_refresh, refreshed first when it expires
    within `min_ttl` seconds. When that refresh fails transiently, a token that is still
    valid is served anyway (the agent sees its expires_at); an expired one answers 503."""
    connection = connection_for_token(connection_id=connection_id, workspace=workspace)
    if connection.status != Connection.Status.ACTIVE:
        raise _not_active(connection)
    if auto_refresh and connection.refresh_token_enc and not _fresh(connection, min_ttl):
        try:
            return token_refresh(
                connection_id=connection_id, workspace=workspace, actor=actor, force=False, min_ttl=min_ttl
            )
        except ProviderUnavailable:
            if connection.expires_at is None or connection.expires_at <= timezone.now():
                raise
            logger.info("serving the current token: refresh unavailable", extra={"connection_id": connection_id})
    audit_record(connection_id=connection.id, workspace=connection.workspace, actor=actor, action="token.read")
    metrics.TOKEN_READS.labels(provider=connection.provider.name).inc()
    return _view(connection)


def _hold_seconds() -> int:
    """How long a refresh may hold the row lock before PostgreSQL ends its session: well
    past the provider call's own timeouts, so only a hung or partitioned process hits it."""
    configured = getattr(settings, "REFRESH_HOLD_SECONDS", None)
    return int(configured or 3 * settings.PROVIDER_HTTP_TIMEOUT + 15)


def _lock_row(connection_id: str) -> Connection:
    if db_connection.vendor == "postgresql":
        with db_connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('idle_in_transaction_session_timeout', %s, true)",
                [f"{settings.REFRESH_LOCK_TIMEOUT_SECONDS}s", f"{_hold_seconds()}s"],
            )
    return Connection.objects.select_for_update(of=("self",)).select_related("provider").get(pk=connection_id)


def _is_lock_timeout(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == _LOCK_NOT_AVAILABLE


def backoff_delay(failures: int, retry_after: int | None = None) -> timedelta:
    """Exponential backoff with jitter (30 s, 1 min, 2 min … capped at 1 h, each drawn
    from its upper half), never shorter than the provider's Retry-After."""
    base = min(3600, 30 * 2 ** max(0, min(failures - 1, 7)))
    return timedelta(seconds=max(base * random.uniform(0.5, 1.0), retry_after or 0))


def token_refresh(
    *,
    connection_id: str,
    workspace: str | None,
    actor: Actor,
    force: bool = True,
    min_ttl: int | None = None,
    if_version: int | None = None,
) -> TokenView:
    """Refresh the connection's tokens at the provider, single-flight, and return them.
    With force=False it refreshes only when the token expires within `min_ttl` seconds
    (auto_refresh). With `if_version` (the token_version the caller saw rejected, e.g. by
    the proxy) it refreshes only when the stored tokens are still that version: otherwise
    another caller already refreshed and its tokens are returned. Raises ConnectionNotActive
    (409: failed, e.g. invalid_grant), ProviderUnavailable (503 + Retry-After: transient,
    tokens unchanged), ProviderError (502)."""
    outcome, connection, error = _refresh(
        connection_id=connection_id,
        workspace=workspace,
        actor=actor,
        force=force,
        min_ttl=min_ttl,
        if_version=if_version,
    )
    if error is not None:
        raise error
    if outcome != "success":
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            actor=actor,
            action="token.read",
            detail={"refresh": outcome},
        )
    return _view(connection)


def token_refresh_due(
    *, connection_id: str, window_seconds: int | None = None, actor: Actor = SWEEP_ACTOR
) -> RefreshResult:
    """The proactive path (sweep task, `refresh_due`): refresh when still due by the sweep's
    rule, re-checked under the row lock. Never raises for an expected outcome."""
    try:
        outcome, _connection, error = _refresh(
            connection_id=connection_id,
            workspace=None,
            actor=actor,
            force=False,
            min_ttl=None,
            window_seconds=window_seconds,
        )
    except (ConnectionNotActive, NotFound):
        return RefreshResult("not_active")
    except RefreshNotSupported:
        return RefreshResult("no_refresh_token")
    except ProviderUnavailable as exc:  # lock_timeout
        return RefreshResult("lock_timeout", retry_after=exc.retry_after)
    if isinstance(error, ProviderUnavailable):
        return RefreshResult(outcome, retry_after=error.retry_after)
    return RefreshResult(outcome)


def _refresh(
    *,
    connection_id: str,
    workspace: str | None,
    actor: Actor,
    force: bool,
    min_ttl: int | None,
    window_seconds: int | None = None,
    if_version: int | None = None,
) -> tuple[str, Connection, ApiError | None]:
    """The one refresh service. Returns the outcome, the row as committed, and the error
    to raise for it (raised only after commit: a failed status must be stored first)."""
    seen = connection_get(connection_id=connection_id, workspace=workspace)
    if seen.status != Connection.Status.ACTIVE:
        raise _not_active(seen)
    provider_name = seen.provider.name
    attempt = _Attempt()
    try:
        with transaction.atomic():
            connection = _lock_row(connection_id)
            if connection.status != Connection.Status.ACTIVE:
                raise _not_active(connection)  # e.g. the caller we waited for got invalid_grant
            if connection.token_version != (seen.token_version if if_version is None else if_version):
                outcome, error = "coalesced", None
            elif not force and not _due(connection, min_ttl=min_ttl, window_seconds=window_seconds):
                outcome, error = "skipped", None
                if min_ttl is None and connection.expires_at is not None:
                    # Not due yet (a duplicate task, a short-lived token): tell the sweep when.
                    connection.next_refresh_attempt_at = _next_proactive_attempt(connection)
                    connection.save(update_fields=["next_refresh_attempt_at"])
            elif force and if_version is None and _just_refreshed(connection):
                outcome, error = "coalesced", None
            elif not connection.refresh_token_enc:
                raise RefreshNotSupported(
                    "this connection has no refresh token; the provider's tokens cannot be refreshed"
                )
            else:
                outcome, error = _refresh_locked(connection, actor, attempt)
    except OperationalError as exc:
        if _is_lock_timeout(exc):
            metrics.refresh_outcome(provider_name, "lock_timeout")
            raise ProviderUnavailable(
                "a refresh of this connection is already in progress; retry shortly", retry_after=2
            ) from None
        _log_lost_result(connection_id, attempt)
        raise
    except DatabaseError:
        _log_lost_result(connection_id, attempt)
        raise
    metrics.refresh_outcome(provider_name, outcome)
    return outcome, connection, error


@dataclass
class _Attempt:
    provider_answered: bool = False


def _log_lost_result(connection_id: str, attempt: _Attempt) -> None:
    if attempt.provider_answered:
        # The provider may have rotated the refresh token we could not store.
        logger.error("refresh result could not be stored", extra={"connection_id": connection_id})


def _due(connection: Connection, *, min_ttl: int | None, window_seconds: int | None) -> bool:
    """min_ttl given: the caller's threshold (auto_refresh); None: the sweep's rule."""
    if min_ttl is None:
        return proactive_due(connection, window_seconds=window_seconds)
    return not _fresh(connection, min_ttl)


def _just_refreshed(connection: Connection) -> bool:
    return bool(
        connection.token_version > 1
        and connection.last_refreshed_at
        and timezone.now() - connection.last_refreshed_at < timedelta(seconds=COALESCE_SECONDS)
    )


def _defer(connection: Connection, retry_after: int | None) -> None:
    """A failed attempt that leaves the tokens alone: count it and move the next proactive
    attempt out by the backoff."""
    connection.refresh_failures += 1
    connection.next_refresh_attempt_at = timezone.now() + backoff_delay(connection.refresh_failures, retry_after)
    connection.save(update_fields=["refresh_failures", "next_refresh_attempt_at", "updated_at"])


def _fail(connection: Connection, actor: Actor, *, error: str, description: str) -> None:
    connection.status = Connection.Status.FAILED
    connection.error = error
    connection.error_description = description
    connection.next_refresh_attempt_at = None
    connection.save(update_fields=["status", "error", "error_description", "next_refresh_attempt_at", "updated_at"])
    audit_record(
        connection_id=connection.id,
        workspace=connection.workspace,
        actor=actor,
        action="connection.failed",
        detail={"error": error},
    )
    metrics.CONNECTIONS_FAILED.labels(provider=connection.provider.name, reason=error).inc()
    transaction.on_commit(lambda: _emit(connection.id, "connection.failed"))


def _refresh_locked(connection: Connection, actor: Actor, attempt: _Attempt) -> tuple[str, ApiError | None]:
    """Call the provider while holding the row lock; update the row. Returns the outcome
    and the error to raise after commit."""
    spec, hooks = resolve(connection.provider, connection.params)
    refresh_token = crypto.decrypt(connection.refresh_token_enc, aad=connection.aad("refresh_token"))
    started = time.monotonic()
    try:
        tokens = client.refresh(spec, hooks, refresh_token=refresh_token)
    except TransientOAuthError as exc:
        _defer(connection, exc.retry_after)
        logger.warning(
            "refresh failed transiently; tokens kept", extra={"connection_id": connection.id, "reason": exc.error}
        )
        return "transient", ProviderUnavailable(
            f"the provider is temporarily unavailable ({exc.error}); stored tokens are unchanged",
            retry_after=exc.retry_after or 5,
        )
    except PermanentOAuthError as exc:
        if exc.error != "invalid_grant":
            # Not the user's grant (e.g. invalid_client: our configuration): keep the
            # connection and back off rather than hammer the provider.
            _defer(connection, None)
            logger.warning("refresh rejected", extra={"connection_id": connection.id, "reason": exc.error})
            return "rejected", ProviderError(f"the provider rejected the refresh ({exc.error})")
        if _stored_refresh_token_changed(connection, refresh_token):
            connection.refresh_from_db()
            logger.info(
                "invalid_grant after a newer refresh was stored: lost race, stored tokens used",
                extra={"connection_id": connection.id},
            )
            return "lost_race", None
        _fail(
            connection,
            actor,
            error="invalid_grant",
            description="the provider no longer accepts the refresh token; the user must reconnect",
        )
        logger.warning("refresh invalid_grant: connection failed", extra={"connection_id": connection.id})
        return "invalid_grant", _not_active(connection)
    finally:
        metrics.REFRESH_SECONDS.labels(provider=spec.name).observe(time.monotonic() - started)
    attempt.provider_answered = True
    if tokens.id_token and spec.oidc:
        account = connection.account or {}
        try:
            oidc.verify_id_token(
                spec,
                hooks,
                tokens.id_token,
                nonce_digest=None,
                expected={"iss": account.get("iss"), "sub": account.get("sub"), "aud": spec.client_id},
            )
        except oidc.DocumentUnavailable:
            # Cannot verify it now; the access and refresh tokens are fine (and the refresh
            # token may have rotated): keep the previous, verified id_token.
            logger.warning(
                "refreshed id_token not verifiable now; previous one kept", extra={"connection_id": connection.id}
            )
            tokens = dataclasses.replace(tokens, id_token=None)
        except IdTokenError as exc:
            # A different identity (or a forged token) must never be served as this user's.
            _fail(connection, actor, error="invalid_id_token", description=str(exc)[:200])
            logger.warning(
                "refreshed id_token rejected: connection failed",
                extra={"connection_id": connection.id, "reason": str(exc)},
            )
            return "invalid_id_token", _not_active(connection)
    recovered = connection.refresh_failures > 0
    changed = store_tokens(connection, tokens, keep_refresh_token=True)
    connection.last_refreshed_at = timezone.now()
    connection.refresh_failures = 0
    connection.next_refresh_attempt_at = _next_proactive_attempt(connection)
    connection.save(update_fields=[*changed, "last_refreshed_at", "refresh_failures", "next_refresh_attempt_at"])
    audit_record(
        connection_id=connection.id,
        workspace=connection.workspace,
        actor=actor,
        action="token.refreshed",
        detail={"rotated": bool(tokens.refresh_token)},
    )
    if recovered:
        transaction.on_commit(lambda: _emit(connection.id, "connection.refreshed_after_failure"))
    logger.info("refreshed", extra={"connection_id": connection.id})
    return "success", None


def _stored_refresh_token_changed(connection: Connection, presented: str) -> bool:
    """Re-read the row: did another refresh store new tokens after we read ours?"""
    stored = Connection.objects.filter(pk=connection.pk).values("token_version", "refresh_token_enc").first()
    if stored is None:
        return False
    if stored["token_version"] != connection.token_version:
        return True
    try:
        current = crypto.decrypt(stored["refresh_token_enc"], aad=connection.aad("refresh_token"))
    except crypto.DecryptionError:
        return False
    return bool(current) and current != presented


def connection_revoke(*, connection_id: str, workspace: str | None, actor: Actor) -> Connection:
    """Revoke at the provider where possible (RFC 7009), wipe the stored tokens whatever the
    provider says, mark the connection revoked. A failed revocation is retried later."""
    connection = connection_get(connection_id=connection_id, workspace=workspace)
    tokens: list[tuple[str, str]] = []
    with transaction.atomic():
        locked = _lock_row(connection.id)
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
        # Wipe everything, except (encrypted, never served: the status is revoked) the one
        # token a deferred revocation still needs.
        kept = "" if revoke_ok else tokens[0][0]
        locked.status = Connection.Status.REVOKED
        locked.id_token_enc = locked.pkce_verifier_enc = ""
        if kept != "refresh_token":
            locked.refresh_token_enc = ""
        if kept != "access_token":
            locked.access_token_enc = ""
        locked.revoke_pending = not revoke_ok
        locked.state_digest = None
        locked.expires_at = None
        locked.save()
        audit_record(
            connection_id=locked.id,
            workspace=locked.workspace,
            actor=actor,
            action="connection.revoked",
            detail={"provider_revoked": revoke_ok},
        )
        transaction.on_commit(lambda: _emit(locked.id, "connection.revoked"))
    metrics.CONNECTIONS_REVOKED.labels(provider=locked.provider.name).inc()
    return locked


def _revoke_at_provider(connection: Connection, tokens: list[tuple[str, str]]) -> bool:
    """True when nothing is left to revoke at the provider."""
    if not tokens:
        return True
    try:
        spec, _hooks = resolve(connection.provider, connection.params)
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
    """Retry a deferred provider revocation; wipe the kept refresh token once it succeeds."""
    with transaction.atomic():
        connection = _lock_row(connection_id)
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
