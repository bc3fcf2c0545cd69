"""Serving a connection's token: the hot path (`GET /v1/token/{id}`)."""

from __future__ import annotations

import logging
from dataclasses import replace

from django.utils import timezone

from broker_app import metrics
from broker_app.audit import Actor, audit_record
from broker_app.models import Connection
from broker_app.selectors import connection_for_token
from broker_app.services.lifecycle import not_active
from broker_app.services.refresh import token_refresh_auto
from broker_app.services.refresh_policy import fresh, just_refreshed
from broker_app.services.token_view import TokenView, token_view
from dromos.errors import ProviderUnavailable

logger = logging.getLogger(__name__)


def token_read(
    *, connection_id: str, workspace: str | None, actor: Actor, auto_refresh: bool = False, min_ttl: int = 60
) -> TokenView:
    """The connection's current token, audited; with auto_refresh, refreshed first when it
    expires within `min_ttl` seconds — but never again within COALESCE_SECONDS of the last
    refresh. When that refresh fails transiently or another caller's is in progress, a token
    that is still valid is served anyway; an expired one answers 503. A token served with
    auto_refresh that lives less than `min_ttl` carries the warning "min_ttl_not_met"."""
    connection = connection_for_token(connection_id=connection_id, workspace=workspace)
    if connection.status != Connection.Status.ACTIVE:
        raise not_active(connection)
    if (
        auto_refresh
        and connection.refresh_token_enc
        and not fresh(connection.expires_at, min_ttl)
        and not just_refreshed(connection)
    ):
        try:
            view = token_refresh_auto(connection_id=connection_id, workspace=workspace, actor=actor, min_ttl=min_ttl)
        except ProviderUnavailable:
            if connection.expires_at is None or connection.expires_at <= timezone.now():
                raise
            logger.info("serving the current token: refresh unavailable", extra={"connection_id": connection_id})
        else:
            return _flag_short(view, min_ttl)
    audit_record(connection_id=connection.id, workspace=connection.workspace, actor=actor, action="token.read")
    metrics.TOKEN_READS.labels(provider=connection.provider.name).inc()
    view = token_view(connection)
    return _flag_short(view, min_ttl) if auto_refresh else view


def _flag_short(view: TokenView, min_ttl: int) -> TokenView:
    return view if fresh(view.expires_at, min_ttl) else replace(view, warnings=("min_ttl_not_met",))
