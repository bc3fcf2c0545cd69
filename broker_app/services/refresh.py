"""Refreshing a connection's tokens at the provider: single-flight, rotation-safe.

Three entry points, one per use, all through `_refresh`:
- `token_refresh`: an agent or operator asked for a refresh (`POST /v1/refresh/{id}`, the
  broker's refresh route, the admin button). Forced, but coalesced with one that finished
  within COALESCE_SECONDS.
- `token_refresh_auto`: `GET /v1/token/{id}?auto_refresh=true` found the token expiring within
  `min_ttl`; refreshes only if that is still true under the lock.
- `token_refresh_due`: the proactive sweep and `manage.py refresh_due`; refreshes only if the
  sweep's rule (refresh_policy.proactive_due) still says so under the lock. Never raises for
  an expected outcome.

Single-flight per connection, across processes and machines: the provider call runs while
holding the connection's PostgreSQL row lock (`SELECT … FOR UPDATE`). Waiters are bounded
by `lock_timeout`; once they get the lock they compare `token_version` with what they read
before waiting and, when it moved, return the tokens the holder stored instead of calling
the provider.

Rotation safety: the rotated refresh token is written in the transaction that releases the
lock, so no caller can ever present the old one after the provider rotated it; a response
without a refresh token keeps the stored one. `invalid_grant` re-reads the row: a refresh
token that changed meanwhile means a lost race (the stored tokens are used), otherwise the
connection fails and the user must reconnect. A refreshed id_token must keep iss, sub, aud.

Transient failures (5xx, timeout, connection error, 429) never touch the tokens; they only
move `next_refresh_attempt_at` out by the policy's backoff, which the sweep honours, and
they never fail a connection.

A process that dies mid-refresh drops its database session and, with it, the lock. A process
that hangs loses its session after `idle_in_transaction_session_timeout` (REFRESH_HOLD_SECONDS),
so no lock is held forever.

Bulkhead: while one caller refreshes a connection, at most REFRESH_MAX_WAITERS others (across
processes, counted in Redis; per process without it) wait for its result, each at most
REFRESH_LOCK_TIMEOUT_SECONDS. The rest answer at once: auto_refresh serves the stored token
while it is still valid, anything else gets 503 `refresh_in_progress` with Retry-After. So a
slow provider holds one thread per connection being refreshed, plus a bounded few.

Coalescing: a connection refreshed within COALESCE_SECONDS is not refreshed again, forced or
because of `min_ttl` (the token served may then live less than `min_ttl`; reads say so).

Crash safety (PostgreSQL): a RefreshInFlight marker is committed on a session of its own just
before the provider is called and deleted in the transaction that stores the answer. A marker
still naming the row's token_version means a process died between the provider's answer and
the commit, so the provider may have rotated the refresh token into the void. The next attempt
then retries at once with the stored refresh token when that is safe (the template says the
provider does not rotate, or the marker is younger than its reuse grace period); otherwise it
fails the connection with `refresh_interrupted` rather than present a refresh token the
provider may treat as reused. Between the provider's answer and the commit there is only the
id_token check (keys fetched beforehand), encryption and the UPDATE.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connections, transaction
from django.db import connection as db_connection
from django.utils import timezone

from broker_app import crypto, metrics
from broker_app.audit import SWEEP, Actor, audit_record
from broker_app.models import Connection, RefreshInFlight
from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, PermanentOAuthError, TransientOAuthError
from broker_app.providers.registry import described, resolve, resolve_machine
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import connection_get
from broker_app.services import machine
from broker_app.services import refresh_policy as policy
from broker_app.services.lifecycle import connection_fail, connection_store_refreshed, not_active
from broker_app.services.token_view import TokenView, token_view
from dromos import redis as shared_redis
from dromos import wire
from dromos.errors import ApiError, ConnectionNotActive, NotFound, ProviderError, ProviderUnavailable

logger = logging.getLogger(__name__)
_LOCK_NOT_AVAILABLE = "55P03"


class RefreshOutcome(enum.StrEnum):
    """What one refresh attempt did; the values are the `outcome` label of dromos_refresh_total."""

    SUCCESS = "success"  # one provider refresh, tokens stored
    COALESCED = "coalesced"  # another caller's refresh served this one
    SKIPPED = "skipped"  # no longer due under the lock
    TRANSIENT = "transient"  # provider 5xx/timeout/429: tokens kept, backoff
    REJECTED = "rejected"  # provider refused for another reason than the grant (our config)
    LOST_RACE = "lost_race"  # invalid_grant for a refresh token another refresh had replaced
    INVALID_GRANT = "invalid_grant"  # the grant is gone: connection failed
    INVALID_ID_TOKEN = "invalid_id_token"  # the refreshed id_token names another identity
    LOCK_TIMEOUT = "lock_timeout"  # another refresh held the row longer than we may wait
    BUSY = "busy"  # another refresh is in progress and enough callers already wait for it
    INTERRUPTED = "interrupted"  # an earlier refresh died after reaching the provider: failed
    NOT_ACTIVE = "not_active"
    NO_REFRESH_TOKEN = "no_refresh_token"
    REFUSED = "refused"  # a machine grant's credentials refused (issue 18): connection failed


@dataclass(frozen=True)
class RefreshResult:
    """The sweep's view of one attempt: `retry_after` is set for outcomes to retry later."""

    outcome: RefreshOutcome
    retry_after: int | None = None


class RefreshNotSupported(ApiError):
    status_code, code = 409, "refresh_not_supported"


class RefreshInProgress(ProviderUnavailable):
    """Another caller is refreshing this connection and enough callers wait for it already."""

    code = "refresh_in_progress"


@dataclass(frozen=True)
class _Attempted:
    outcome: RefreshOutcome
    connection: Connection
    error: ApiError | None  # raised to the caller after commit (a failed status is stored first)


def token_refresh(*, connection_id: str, workspace: str | None, actor: Actor) -> TokenView:
    """Refresh at the provider now (coalesced with a refresh that just finished) and return
    the tokens. Raises ConnectionNotActive (409: e.g. invalid_grant failed it),
    RefreshNotSupported (409), ProviderUnavailable (503 + Retry-After: transient, tokens
    unchanged), ProviderError (502: the provider rejected our request)."""
    return _served(
        _refresh(connection_id=connection_id, workspace=workspace, actor=actor, force=True, min_ttl=None), actor
    )


def token_refresh_auto(*, connection_id: str, workspace: str | None, actor: Actor, min_ttl: int) -> TokenView:
    """auto_refresh: refresh only if the token still expires within `min_ttl` once the row
    lock is held, and return the tokens. Raises as token_refresh does."""
    return _served(
        _refresh(connection_id=connection_id, workspace=workspace, actor=actor, force=False, min_ttl=min_ttl), actor
    )


def token_refresh_if_version(*, connection_id: str, workspace: str, actor: Actor, token_version: int) -> TokenView:
    """The API proxy's refresh after a provider's 401 (issue 15): refresh only while the
    stored tokens are still `token_version` (the one the provider rejected); when another
    caller already replaced them, theirs are served. Single flight as token_refresh, and
    not coalesced with a refresh that "just finished" for the same version: that token was
    rejected. Raises as token_refresh does."""
    return _served(
        _refresh(
            connection_id=connection_id,
            workspace=workspace,
            actor=actor,
            force=True,
            min_ttl=None,
            if_version=token_version,
        ),
        actor,
    )


def token_refresh_due(*, connection_id: str, window_seconds: int | None = None, actor: Actor = SWEEP) -> RefreshResult:
    """The proactive path: refresh when still due by the sweep's rule, re-checked under the
    row lock. Returns the outcome; never raises for an expected one."""
    try:
        attempted = _refresh(
            connection_id=connection_id,
            workspace=None,
            actor=actor,
            force=False,
            min_ttl=None,
            window_seconds=window_seconds,
        )
    except (ConnectionNotActive, NotFound):
        return RefreshResult(RefreshOutcome.NOT_ACTIVE)
    except RefreshNotSupported:
        return RefreshResult(RefreshOutcome.NO_REFRESH_TOKEN)
    except ProviderUnavailable as exc:  # lock_timeout, or busy: retried shortly like it
        return RefreshResult(RefreshOutcome.LOCK_TIMEOUT, retry_after=exc.retry_after)
    if isinstance(attempted.error, ProviderUnavailable):
        return RefreshResult(attempted.outcome, retry_after=attempted.error.retry_after)
    return RefreshResult(attempted.outcome)


def _served(attempted: _Attempted, actor: Actor) -> TokenView:
    if attempted.error is not None:
        raise attempted.error
    connection = attempted.connection
    if attempted.outcome != RefreshOutcome.SUCCESS:
        # Served without a provider refresh of its own: still a token read to audit.
        audit_record(
            connection_id=connection.id,
            workspace=connection.workspace,
            environment=connection.environment,
            actor=actor,
            action="token.read",
            detail={"refresh": attempted.outcome.value},
        )
    return token_view(connection)


def idle_days(provider) -> int | None:
    """The provider's refresh-token idle lifetime (the catalog's refresh_token_idle_days)."""
    try:
        return described(provider).refresh_token_idle_days
    except ProviderConfigError:
        return None


def next_attempt(connection: Connection):
    """When the sweep should next look at this connection (refresh_policy's rule)."""
    return policy.next_proactive_attempt(
        expires_at=connection.expires_at,
        refreshed_at=connection.last_refreshed_at,
        last_read_at=connection.last_read_at,
        idle_days=idle_days(connection.provider),
    )


def _hold_seconds() -> int:
    """How long a refresh may hold the row lock before PostgreSQL ends its session: well
    past the provider call's own timeouts, so only a hung or partitioned process hits it."""
    return int(settings.REFRESH_HOLD_SECONDS or 3 * settings.PROVIDER_HTTP_TIMEOUT + 15)


def lock_row(connection_id: str) -> Connection:
    """Lock the connection's row for a token change (bounded wait, bounded hold)."""
    if db_connection.vendor == "postgresql":
        with db_connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('idle_in_transaction_session_timeout', %s, true)",
                [f"{settings.REFRESH_LOCK_TIMEOUT_SECONDS}s", f"{_hold_seconds()}s"],
            )
    return Connection.objects.select_for_update(of=("self",)).select_related("provider").get(pk=connection_id)


def _lock_for_refresh(connection_id: str) -> Connection:
    """lock_row, but a caller that would have to wait does so only as one of the
    REFRESH_MAX_WAITERS admitted for this connection; the others get _RefreshBusy at once."""
    if db_connection.vendor != "postgresql":
        return lock_row(connection_id)
    try:
        with transaction.atomic():  # a savepoint: the failed NOWAIT must not abort the transaction
            return (
                Connection.objects.select_for_update(nowait=True, of=("self",))
                .select_related("provider")
                .get(pk=connection_id)
            )
    except OperationalError as exc:
        if not _is_lock_timeout(exc):
            raise
    with _waiter_slot(connection_id) as admitted:
        if not admitted:
            raise _RefreshBusy
        return lock_row(connection_id)


class _RefreshBusy(Exception):
    pass


_local_waiters: Counter[str] = Counter()
_local_waiters_lock = threading.Lock()


@contextmanager
def _waiter_slot(connection_id: str) -> Iterator[bool]:
    """Count this caller among the connection's waiters; yields whether it may wait."""
    limit = settings.REFRESH_MAX_WAITERS
    client = None if shared_redis.resting() else shared_redis.client()
    key = f"dromos:refresh-waiters:{connection_id}"
    if client is not None:
        try:
            pipe = client.pipeline()
            pipe.incr(key)
            pipe.expire(key, settings.REFRESH_LOCK_TIMEOUT_SECONDS + 30)
            waiting = pipe.execute()[0]
        except shared_redis.RedisError:  # Redis down: bound the waiters per process instead
            shared_redis.trip()
            client = None
        else:
            try:
                yield waiting <= limit
            finally:
                try:
                    client.decr(key)
                except shared_redis.RedisError:  # the key expires by itself
                    logger.warning("could not release a refresh waiter slot")
            return
    with _local_waiters_lock:
        _local_waiters[connection_id] += 1
        waiting = _local_waiters[connection_id]
    try:
        yield waiting <= limit
    finally:
        with _local_waiters_lock:
            _local_waiters[connection_id] -= 1
            if _local_waiters[connection_id] <= 0:
                del _local_waiters[connection_id]


def _is_lock_timeout(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == _LOCK_NOT_AVAILABLE


@dataclass
class _ProviderCall:
    answered: bool = False


def _refresh(
    *,
    connection_id: str,
    workspace: str | None,
    actor: Actor,
    force: bool,
    min_ttl: int | None,
    window_seconds: int | None = None,
    if_version: int | None = None,
) -> _Attempted:
    """The one refresh service: decide under the row lock, call the provider at most once.
    `if_version`: the version the caller saw rejected, instead of the one read here."""
    seen = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    if seen.status != Connection.Status.ACTIVE:
        raise not_active(seen)
    provider_name = seen.provider.name
    call = _ProviderCall()
    try:
        with transaction.atomic():
            connection = _lock_for_refresh(connection_id)
            if connection.status != Connection.Status.ACTIVE:
                raise not_active(connection)  # e.g. the caller we waited for got invalid_grant
            if connection.token_version != (seen.token_version if if_version is None else if_version):
                outcome, error = RefreshOutcome.COALESCED, None
            elif min_ttl is not None and policy.just_refreshed(connection):
                # auto_refresh right after a refresh: never again because of min_ttl (a token
                # shorter-lived than min_ttl would otherwise be refreshed on every read).
                outcome, error = RefreshOutcome.COALESCED, None
            elif not force and not policy.due(
                connection, min_ttl=min_ttl, window_seconds=window_seconds, idle_days=idle_days(connection.provider)
            ):
                outcome, error = RefreshOutcome.SKIPPED, None
                if min_ttl is None and connection.expires_at is not None:
                    # Not due yet (a duplicate task, a short-lived token, an idle connection):
                    # tell the sweep when.
                    connection.next_refresh_attempt_at = next_attempt(connection)
                    connection.save(update_fields=["next_refresh_attempt_at"])
            elif force and if_version is None and policy.just_refreshed(connection):
                outcome, error = RefreshOutcome.COALESCED, None
            elif not policy.renewable(connection):
                raise RefreshNotSupported(
                    "this connection has no refresh token; the provider's tokens cannot be refreshed"
                )
            else:
                outcome, error = _refresh_locked(connection, actor, call)
    except _RefreshBusy:
        metrics.refresh_outcome(provider_name, RefreshOutcome.BUSY.value)
        raise RefreshInProgress("a refresh of this connection is in progress; retry shortly", retry_after=1) from None
    except OperationalError as exc:
        if _is_lock_timeout(exc):
            metrics.refresh_outcome(provider_name, RefreshOutcome.LOCK_TIMEOUT.value)
            raise ProviderUnavailable(
                "a refresh of this connection is already in progress; retry shortly", retry_after=2
            ) from None
        _log_lost_result(connection_id, call)
        raise
    except DatabaseError:
        _log_lost_result(connection_id, call)
        raise
    metrics.refresh_outcome(provider_name, outcome.value)
    return _Attempted(outcome, connection, error)


def _log_lost_result(connection_id: str, call: _ProviderCall) -> None:
    if call.answered:
        # The provider may have rotated the refresh token we could not store.
        logger.error("refresh result could not be stored", extra={"connection_id": connection_id})


def _defer(connection: Connection, retry_after: int | None) -> None:
    """A failed attempt that leaves the tokens alone: count it and move the next proactive
    attempt out by the backoff."""
    connection.refresh_failures += 1
    connection.next_refresh_attempt_at = timezone.now() + policy.backoff_delay(connection.refresh_failures, retry_after)
    connection.save(update_fields=["refresh_failures", "next_refresh_attempt_at", "updated_at"])


def _refresh_locked(
    connection: Connection, actor: Actor, call: _ProviderCall
) -> tuple[RefreshOutcome, ApiError | None]:
    """Call the provider while holding the row lock; update the row. Returns the outcome
    and the error to raise after commit."""
    if connection.flow in wire.MACHINE_FLOWS:
        return _obtain_locked(connection, actor, call)
    spec, hooks = resolve(connection.provider, connection.params)
    if not _safe_after_interruption(connection, spec):
        RefreshInFlight.objects.filter(pk=connection.pk).delete()
        connection_fail(
            connection=connection,
            error="refresh_interrupted",
            description="an earlier refresh stopped after the provider may have rotated the refresh token; "
            "the user must reconnect",
            actor=actor,
            expected=(Connection.Status.ACTIVE,),
        )
        logger.warning("refresh interrupted earlier: connection failed", extra={"connection_id": connection.id})
        return RefreshOutcome.INTERRUPTED, not_active(connection)
    refresh_token = crypto.decrypt(connection.refresh_token_enc, aad=connection.aad("refresh_token"))
    if spec.oidc and spec.jwks_uri:
        _warm_signing_keys(spec.jwks_uri)  # so nothing slow runs between the answer and the commit
    _mark_in_flight(connection)
    started = time.monotonic()
    try:
        tokens = client.refresh(spec, hooks, refresh_token=refresh_token)
    except TransientOAuthError as exc:
        _defer(connection, exc.retry_after)
        logger.warning(
            "refresh failed transiently; tokens kept", extra={"connection_id": connection.id, "reason": exc.error}
        )
        return RefreshOutcome.TRANSIENT, ProviderUnavailable(
            f"the provider is temporarily unavailable ({exc.error}); stored tokens are unchanged",
            retry_after=exc.retry_after or 5,
        )
    except PermanentOAuthError as exc:
        if exc.error != "invalid_grant":
            # Not the user's grant (e.g. invalid_client: our configuration): keep the
            # connection and back off rather than hammer the provider.
            _defer(connection, None)
            logger.warning("refresh rejected", extra={"connection_id": connection.id, "reason": exc.error})
            return RefreshOutcome.REJECTED, ProviderError(f"the provider rejected the refresh ({exc.error})")
        if _stored_refresh_token_changed(connection, refresh_token):
            connection.refresh_from_db()
            logger.info(
                "invalid_grant after a newer refresh was stored: lost race, stored tokens used",
                extra={"connection_id": connection.id},
            )
            return RefreshOutcome.LOST_RACE, None
        connection_fail(
            connection=connection,
            error="invalid_grant",
            description="the provider no longer accepts the refresh token; the user must reconnect",
            actor=actor,
            expected=(Connection.Status.ACTIVE,),
        )
        logger.warning("refresh invalid_grant: connection failed", extra={"connection_id": connection.id})
        return RefreshOutcome.INVALID_GRANT, not_active(connection)
    finally:
        metrics.REFRESH_SECONDS.labels(provider=spec.name).observe(time.monotonic() - started)
        # Deleted in this transaction: it commits with whatever the answer changed.
        RefreshInFlight.objects.filter(pk=connection.pk).delete()
    call.answered = True
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
            connection_fail(
                connection=connection,
                error="invalid_id_token",
                description=str(exc)[:200],
                actor=actor,
                expected=(Connection.Status.ACTIVE,),
            )
            logger.warning(
                "refreshed id_token rejected: connection failed",
                extra={"connection_id": connection.id, "reason": str(exc)},
            )
            return RefreshOutcome.INVALID_ID_TOKEN, not_active(connection)
    connection_store_refreshed(
        connection=connection, tokens=tokens, actor=actor, idle_days=idle_days(connection.provider)
    )
    return RefreshOutcome.SUCCESS, None


def _obtain_locked(connection: Connection, actor: Actor, call: _ProviderCall) -> tuple[RefreshOutcome, ApiError | None]:
    """A machine connection (issue 18): a new token by its grant instead of a refresh token,
    under the same lock. Nothing can be lost mid-call (no refresh token rotates), so no
    in-flight marker. A refusal fails the connection with the provider's code: the secret or
    key is wrong and retrying would not change that."""
    started = time.monotonic()
    try:
        spec, hooks = resolve_machine(connection.provider, connection.params)
        tokens = machine.machine_token(connection, spec, hooks)
    except ProviderConfigError:  # e.g. the discovery document is unreachable: try later
        _defer(connection, None)
        return RefreshOutcome.TRANSIENT, ProviderUnavailable(
            "the provider's configuration is unavailable", retry_after=5
        )
    except TransientOAuthError as exc:
        _defer(connection, exc.retry_after)
        logger.warning(
            "token request failed transiently; token kept", extra={"connection_id": connection.id, "reason": exc.error}
        )
        return RefreshOutcome.TRANSIENT, ProviderUnavailable(
            f"the provider is temporarily unavailable ({exc.error}); the stored token is unchanged",
            retry_after=exc.retry_after or 5,
        )
    except PermanentOAuthError as exc:
        connection_fail(
            connection=connection,
            error=exc.error,
            description=f"the provider refused the {connection.flow} token request ({exc.error})",
            actor=actor,
            expected=(Connection.Status.ACTIVE,),
        )
        logger.warning("token request refused: connection failed", extra={"connection_id": connection.id})
        return RefreshOutcome.REFUSED, not_active(connection)
    finally:
        metrics.REFRESH_SECONDS.labels(provider=connection.provider.name).observe(time.monotonic() - started)
    call.answered = True
    connection_store_refreshed(connection=connection, tokens=tokens, actor=actor)
    return RefreshOutcome.SUCCESS, None


def _safe_after_interruption(connection: Connection, spec) -> bool:
    """Whether this refresh may proceed: true unless an earlier one reached the provider for
    the same tokens and never stored an answer, and the provider may have rotated the refresh
    token with no grace period left for presenting the old one again."""
    marker = RefreshInFlight.objects.filter(pk=connection.pk).first()
    if marker is None or marker.token_version != connection.token_version:
        return True
    grace = timedelta(seconds=spec.refresh_token_reuse_grace_seconds)
    if not spec.refresh_token_rotation or timezone.now() - marker.started_at <= grace:
        logger.warning(
            "an earlier refresh was interrupted; retrying with the stored refresh token",
            extra={"connection_id": connection.id},
        )
        return True
    return False


def _mark_in_flight(connection: Connection) -> None:
    """Commit the marker on a session of its own, so it survives this process (PostgreSQL;
    on SQLite a second writer would wait for our own transaction, so there is none).

    A marker left for the same token_version (a retry inside the reuse grace) keeps its
    started_at: the grace runs from the first presentation of that refresh token, so a retry
    that dies too must not extend it."""
    if db_connection.vendor != "postgresql":
        return
    sql = (
        "INSERT INTO broker_app_refreshinflight (connection_id, token_version, started_at) VALUES (%s, %s, %s) "
        "ON CONFLICT (connection_id) DO UPDATE SET started_at = CASE "
        "WHEN broker_app_refreshinflight.token_version = EXCLUDED.token_version "
        "THEN broker_app_refreshinflight.started_at ELSE EXCLUDED.started_at END, "
        "token_version = EXCLUDED.token_version"
    )
    session = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with session.cursor() as cursor:
            cursor.execute(sql, [connection.pk, connection.token_version, timezone.now()])
    finally:
        session.close()


def _warm_signing_keys(jwks_uri: str) -> None:
    try:
        oidc.get_document(jwks_uri, require_list="keys")
    except oidc.DocumentUnavailable:
        pass  # verification after the answer keeps the previous id_token then


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
