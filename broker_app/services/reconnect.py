"""Reconnect in place (issue 16): a fresh consent for an existing connection id.

The flow's secrets (state digest, PKCE verifier, nonce digest, requested scopes) live in a
ConnectAttempt row, so while the user is away at the provider the connection keeps its
status and its tokens keep working. On the callback the new grant replaces the old one only
when it belongs to the same account at the provider: the catalog's `account_id_field`
("id_token.sub", Slack's "token.authed_user.id", GitHub's "userinfo.id" — the userinfo
endpoint asked with the new access token —, QuickBooks' "callback.realmId" …, read by
providers/account_id.py) must name an id on both sides and the ids be equal, and for OIDC
providers the verified id_token's `iss` must equal the stored one. Anything else — another
account, an account that cannot be identified, a denied consent — changes nothing: the
attempt fails, the audit log records it, and the browser lands on `return_url?status=error&error=…&connection_id=…`.

Revoked connections cannot be reconnected (409): revocation wiped the grant and told the
provider to forget it; the agent requests a new connection."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from broker_app import crypto
from broker_app.audit import Actor
from broker_app.models import ConnectAttempt, Connection, ConnectSession
from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, OAuthError, safe_code
from broker_app.providers.account_id import account_id, userinfo_record
from broker_app.providers.registry import resolve
from broker_app.providers.spec import ProviderConfigError
from broker_app.return_urls import ReturnUrlError, validate_return_url
from broker_app.selectors import connection_get
from broker_app.services.connect import (
    CallbackOutcome,
    callback_metadata,
    callback_url,
    connection_complete,
    with_query,
)
from broker_app.services.lifecycle import (
    RECONNECTABLE,
    connection_reconnect_complete,
    connection_reconnect_reject,
    connection_reconnect_start,
    not_active,
)
from dromos.errors import InvalidRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconnectResult:
    connection: Connection
    attempt: ConnectAttempt
    auth_url: str


def reconnect_prepare(*, connection: Connection, scopes: list[str] | None, return_url: str | None) -> ConnectAttempt:
    """Check that `connection` may be reconnected and build (unsaved) its attempt."""
    if connection.status not in RECONNECTABLE:
        error = not_active(connection)
        if connection.status == Connection.Status.REVOKED:
            error.args = ("connection is revoked: it cannot be reconnected; request a new connection",)
        raise error
    target = return_url or connection.return_url
    try:
        validate_return_url(target)
    except ReturnUrlError as exc:
        raise InvalidRequest(str(exc), details={"return_url": [str(exc)]}) from None
    requested = list(dict.fromkeys([*connection.scopes, *(scopes or [])]))
    return ConnectAttempt(connection=connection, scopes=requested, return_url=target, state_expires_at=timezone.now())


def connection_reconnect(
    *,
    connection_id: str,
    workspace: str,
    scopes: list[str] | None,
    return_url: str | None,
    actor: Actor,
    connect_session: ConnectSession | None = None,
) -> ReconnectResult:
    """A fresh authorization URL for the same connection id (another workspace's id: 404;
    a revoked or pending connection: 409). `scopes` add to the connection's scopes."""
    connection = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    attempt = reconnect_prepare(connection=connection, scopes=scopes, return_url=return_url)
    attempt.connect_session = connect_session
    try:
        spec, _hooks = resolve(connection.provider, connection.params)
    except ProviderConfigError as exc:
        raise InvalidRequest(str(exc), details={"params": [str(exc)]}) from None
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    nonce = secrets.token_urlsafe(24) if spec.oidc and "openid" in attempt.scopes else None
    attempt.state_digest = crypto.digest(state)
    attempt.state_expires_at = timezone.now() + timedelta(seconds=settings.OAUTH_STATE_TTL_SECONDS)
    attempt.nonce_digest = crypto.digest(nonce) if nonce else ""
    attempt.pkce_verifier_enc = crypto.encrypt(verifier, aad=attempt.aad("pkce_verifier"))
    auth_url = client.authorize_url(
        spec,
        redirect_uri=callback_url(),
        scopes=attempt.scopes,
        state=state,
        code_challenge=client.pkce_challenge(verifier),
        nonce=nonce,
        extra=spec.reconnect_authorize_params,
    )
    connection_reconnect_start(attempt=attempt, actor=actor)
    return ReconnectResult(connection=connection, attempt=attempt, auth_url=auth_url)


def _documents(spec, *, account: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What one grant left on a connection, as the documents `account_id` reads: the verified
    id_token claims (hooks.account keeps sub, iss …), the token response's account facts put
    back at their catalog paths (account_fields) and flat metadata, the kept callback
    parameters, and the account id a userinfo answer named (kept under account["userinfo"])."""
    token: dict[str, Any] = {key: value for key, value in metadata.items()}
    for key, path in spec.account_fields.items():
        if key not in account:
            continue
        node = token
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = account[key]
    userinfo = account.get("userinfo")
    return {
        "claims": dict(account),
        "token": token,
        "userinfo": userinfo if isinstance(userinfo, dict) else None,
        "callback": dict(metadata),
    }


def same_account(
    spec,
    *,
    stored: Mapping[str, Any],
    new: Mapping[str, Any],
    stored_metadata: Mapping[str, Any] | None = None,
    new_metadata: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> str | None:
    """None when `new` is provably the account `stored` describes, else the error code. The
    catalog's `account_id_field` ("id_token.sub", "token.authed_user.id", "userinfo.id",
    "callback.realmId", "param.shop" …) is read from both grants by providers.account_id; an empty field or an
    id missing on either side is account_unverifiable."""
    field = spec.account_id_field
    old_id = account_id(
        field, params=dict(params or {}), **_documents(spec, account=stored, metadata=stored_metadata or {})
    )
    new_id = account_id(field, params=dict(params or {}), **_documents(spec, account=new, metadata=new_metadata or {}))
    if old_id is None or new_id is None:
        return "account_unverifiable"
    if old_id != new_id:
        return "account_mismatch"
    if spec.oidc and (stored.get("iss") or new.get("iss")) and stored.get("iss") != new.get("iss"):
        return "account_mismatch"
    return None


def _claim_attempt(state: str) -> tuple[ConnectAttempt | None, str | None]:
    with transaction.atomic():
        attempt = (
            ConnectAttempt.objects.select_for_update()
            .select_related("connection__provider")
            .filter(state_digest=crypto.digest(state))
            .first()
        )
        if attempt is None:
            return None, "unknown_state"
        attempt.state_digest = None
        attempt.save(update_fields=["state_digest"])
    if attempt.status != ConnectAttempt.Status.PENDING:
        return None, "state_already_used"
    return attempt, None


def _back(attempt: ConnectAttempt, status: str, error: str | None = None) -> CallbackOutcome:
    query = {"status": status, "connection_id": attempt.connection_id}
    if error:
        query = {"status": status, "error": safe_code(error), "connection_id": attempt.connection_id}
    return CallbackOutcome(connection=attempt.connection, redirect_url=with_query(attempt.return_url, query))


def _refuse(attempt: ConnectAttempt, error: str) -> CallbackOutcome:
    connection_reconnect_reject(attempt=attempt, error=error)
    return _back(attempt, "error", error)


def reconnect_complete(
    *,
    state: str,
    code: str | None,
    iss: str | None,
    error: str | None,
    error_description: str | None,
    callback_params: Mapping[str, str] | None = None,
) -> CallbackOutcome | None:
    """The provider's redirect for a reconnect; None when `state` names no attempt."""
    attempt, page_error = _claim_attempt(state)
    if attempt is None:
        return None if page_error == "unknown_state" else CallbackOutcome(None, None, page_error)
    connection = attempt.connection
    if attempt.state_expires_at < timezone.now():
        return _refuse(attempt, "state_expired")
    if error:
        return _refuse(attempt, error)
    try:
        spec, hooks = resolve(connection.provider, connection.params)
    except ProviderConfigError:
        return _refuse(attempt, "provider_misconfigured")
    if iss is not None and spec.issuer and iss != spec.issuer and "{tenantid}" not in spec.issuer:
        return _refuse(attempt, "invalid_issuer")
    if not code:
        return _refuse(attempt, "missing_code")
    verifier = crypto.decrypt(attempt.pkce_verifier_enc, aad=attempt.aad("pkce_verifier"))
    try:
        tokens = client.exchange_code(spec, hooks, code=code, redirect_uri=callback_url(), code_verifier=verifier)
    except OAuthError:
        return _refuse(attempt, "code_exchange_failed")
    claims = None
    if tokens.id_token and spec.oidc:
        try:
            claims = oidc.verify_id_token(spec, hooks, tokens.id_token, nonce_digest=attempt.nonce_digest or None)
        except (IdTokenError, oidc.DocumentUnavailable):
            return _refuse(attempt, "invalid_id_token")
    elif spec.oidc and attempt.nonce_digest:
        return _refuse(attempt, "missing_id_token")
    account = {**tokens.account, **hooks.account(spec, claims)}
    if spec.account_id_field.startswith("userinfo."):
        # GitHub, Zoom …: who the new grant belongs to is what the userinfo endpoint says when
        # asked with the new access token. No answer, no proof: nothing changes.
        try:
            document = client.userinfo(spec, access_token=tokens.access_token)
        except OAuthError as exc:
            logger.warning("reconnect: userinfo unavailable", extra={"error_code": exc.error})
            return _refuse(attempt, "userinfo_unavailable")
        record = userinfo_record(spec.account_id_field, document)
        if record:
            account["userinfo"] = record
    extra_metadata = callback_metadata(spec, callback_params)
    if extra_metadata:
        tokens = replace(tokens, metadata={**tokens.metadata, **extra_metadata})
    mismatch = same_account(
        spec,
        stored=connection.account or {},
        new=account,
        stored_metadata=connection.metadata or {},
        new_metadata=tokens.metadata,
        params=connection.params or {},
    )
    if mismatch:
        # The new grant is dropped unused: it belongs to someone else (or to no one we can name).
        return _refuse(attempt, mismatch)
    if not connection_reconnect_complete(attempt=attempt, tokens=tokens, account=account):
        return _back(attempt, "error", "connection_not_reconnectable")
    return _back(attempt, "success")


def callback_complete(
    *,
    state: str | None,
    code: str | None,
    iss: str | None,
    error: str | None,
    error_description: str | None,
    callback_params: Mapping[str, str] | None = None,
) -> CallbackOutcome:
    """/auth/callback: a new connection's consent, or else a reconnect's."""
    arguments = dict(
        state=state,
        code=code,
        iss=iss,
        error=error,
        error_description=error_description,
        callback_params=callback_params,
    )
    outcome = connection_complete(**arguments)
    if outcome.page_error == "unknown_state" and state:
        reconnected = reconnect_complete(**{**arguments, "state": state})
        if reconnected is not None:
            return reconnected
    return outcome
