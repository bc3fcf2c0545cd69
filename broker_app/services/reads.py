"""Serving a connection's token: the hot path (`GET /v1/token/{id}`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from functools import lru_cache

from django.db import DatabaseError, transaction
from django.utils import timezone

from broker_app import metrics
from broker_app.audit import Actor, audit_record
from broker_app.models import Connection
from broker_app.selectors import connection_for_token, connection_for_token_read
from broker_app.services.lifecycle import not_active
from broker_app.services.refresh import token_refresh_auto
from broker_app.services.refresh_policy import (
    READ_MARK_SECONDS,
    READ_REFRESH_MIN_TTL,
    fresh,
    in_use,
    just_refreshed,
    next_proactive_attempt,
    read_mark_due,
    renewable,
    token_read_since_refresh,
)
from broker_app.services.token_view import TokenView, token_view
from dromos.errors import NotFound, ProviderUnavailable

logger = logging.getLogger(__name__)


def token_read(
    *, connection_id: str, workspace: str | None, actor: Actor, auto_refresh: bool = False, min_ttl: int = 60
) -> TokenView:
    """The connection's current token, audited; with auto_refresh, refreshed first when it
    expires within `min_ttl` seconds — but never again within COALESCE_SECONDS of the last
    refresh. When that refresh fails transiently or another caller's is in progress, a token
    that is still valid is served anyway; an expired one answers 503. A token served with
    auto_refresh that lives less than `min_ttl` carries the warning "min_ttl_not_met"."""
    connection = connection_for_token(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    if connection.status != Connection.Status.ACTIVE:
        raise not_active(connection)
    _mark_read(connection)
    threshold = _refresh_threshold(auto_refresh, min_ttl)
    if _needs_refresh(connection, threshold):
        try:
            view = token_refresh_auto(connection_id=connection_id, workspace=workspace, actor=actor, min_ttl=threshold)
        except ProviderUnavailable:
            if connection.expires_at is None or connection.expires_at <= timezone.now():
                raise
            logger.info("serving the current token: refresh unavailable", extra={"connection_id": connection_id})
        else:
            return _flag_short(view, min_ttl) if auto_refresh else view
    return _serve_stored(connection, actor=actor, auto_refresh=auto_refresh, min_ttl=min_ttl)


def token_read_stored(
    *, connection_id: str, workspace: str, actor: Actor, auto_refresh: bool = False, min_ttl: int = 60
) -> TokenView | None:
    """token_read's common case only (broker_app/fast_token.py): an active connection of the
    actor's workspace and environment whose stored token is served as it is: marked read,
    audited, decrypted. None, before anything is written, for every other case (unknown,
    not active, a refresh due): token_read serves those, with their errors.

    On PostgreSQL the plain case (nothing to mark, no refresh near) is one statement that
    reads the row and writes its audit row (selectors.connection_for_token_read); any other
    case continues from the row it read, as below."""
    threshold = _refresh_threshold(auto_refresh, min_ttl)
    now = timezone.now()
    try:
        found = connection_for_token_read(
            connection_id=connection_id,
            workspace=workspace,
            environment=actor.environment,
            audit={
                "actor": actor.name[:128],
                "action": "token.read",
                "ip": actor.ip or None,
                "created_at": now.isoformat(),
                "status": Connection.Status.ACTIVE.value,
                "fresh_after": (now + timedelta(seconds=threshold)).isoformat(),
                "marked_after": (now - timedelta(seconds=READ_MARK_SECONDS)).isoformat(),
            },
        )
        connection, audited = found or (
            connection_for_token(connection_id=connection_id, workspace=workspace, environment=actor.environment),
            False,
        )
    except NotFound:
        return None
    if audited:
        return _served(connection, auto_refresh=auto_refresh, min_ttl=min_ttl)
    if connection.status != Connection.Status.ACTIVE:
        return None
    if _needs_refresh(connection, threshold):
        return None
    _mark_read(connection)
    return _serve_stored(connection, actor=actor, auto_refresh=auto_refresh, min_ttl=min_ttl)


def _refresh_threshold(auto_refresh: bool, min_ttl: int) -> int:
    # An idle connection's token is left to expire (refresh_policy): a plain read of one
    # that expires within READ_REFRESH_MIN_TTL refreshes it first, as auto_refresh would.
    return min_ttl if auto_refresh else READ_REFRESH_MIN_TTL


def _needs_refresh(connection: Connection, threshold: int) -> bool:
    return bool(
        renewable(connection) and not fresh(connection.expires_at, threshold) and not just_refreshed(connection)
    )


def _serve_stored(connection: Connection, *, actor: Actor, auto_refresh: bool, min_ttl: int) -> TokenView:
    """The stored token, audited before it is decrypted and returned."""
    audit_record(
        connection_id=connection.id,
        workspace=connection.workspace,
        environment=connection.environment,
        actor=actor,
        action="token.read",
    )
    return _served(connection, auto_refresh=auto_refresh, min_ttl=min_ttl)


def _served(connection: Connection, *, auto_refresh: bool, min_ttl: int) -> TokenView:
    """A token read whose audit row is written: counted, decrypted."""
    _token_reads(connection.provider.name).inc()
    view = token_view(connection)
    return _flag_short(view, min_ttl) if auto_refresh else view


@lru_cache(maxsize=1024)
def _token_reads(provider: str):
    """metrics.TOKEN_READS' child for the provider, looked up once (issue 20)."""
    return metrics.TOKEN_READS.labels(provider=provider)


def _mark_read(connection: Connection) -> None:
    """Record the read for the usage-aware sweep, from the values the read loaded: one UPDATE
    on the first read of each new token and at most once an hour otherwise. The first read
    of a token makes the connection in use: its next proactive refresh is moved ahead of
    expiry (unless a backoff holds it)."""
    now = timezone.now()
    refreshed_at = connection.last_refreshed_at
    if not read_mark_due(last_read_at=connection.last_read_at, refreshed_at=refreshed_at, now=now):
        return
    changes: dict = {"last_read_at": now}
    first_read = not token_read_since_refresh(last_read_at=connection.last_read_at, refreshed_at=refreshed_at)
    if (
        first_read
        and not connection.refresh_failures
        and connection.expires_at is not None
        and in_use(last_read_at=now, refreshed_at=refreshed_at, expires_at=connection.expires_at, now=now)
    ):
        changes["next_refresh_attempt_at"] = next_proactive_attempt(
            expires_at=connection.expires_at, refreshed_at=refreshed_at, usage_aware=False
        )
    try:
        with transaction.atomic():
            # SKIP LOCKED: a refresh holding the row must not hold up the read either.
            unlocked = Connection.objects.filter(pk=connection.pk).select_for_update(skip_locked=True)
            Connection.objects.filter(pk__in=unlocked.values("pk")).update(**changes)
    except DatabaseError:  # the read is served anyway; the mark is only the sweep's hint
        logger.warning("could not record a token read", extra={"connection_id": connection.pk})
    connection.last_read_at = now


def _flag_short(view: TokenView, min_ttl: int) -> TokenView:
    return view if fresh(view.expires_at, min_ttl) else replace(view, warnings=("min_ttl_not_met",))
