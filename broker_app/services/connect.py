"""Starting and completing a connection: the consent flow."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from broker_app import crypto
from broker_app.audit import Actor
from broker_app.models import Connection
from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, OAuthError, safe_code
from broker_app.providers.account_id import userinfo_record
from broker_app.providers.registry import resolve
from broker_app.providers.spec import ProviderConfigError
from broker_app.return_urls import ReturnUrlError, validate_return_url
from broker_app.selectors import provider_get_by_name
from broker_app.services.lifecycle import connection_activate, connection_create, connection_fail
from dromos.errors import InvalidRequest

logger = logging.getLogger(__name__)


def callback_url() -> str:
    return f"{settings.BASE_URL}/auth/callback"


@dataclass(frozen=True)
class StartResult:
    connection: Connection
    auth_url: str
    state: str


@dataclass(frozen=True)
class CallbackOutcome:
    """Where the person goes next: a redirect to the stored return URL, or (no usable
    connection) a page with `page_error`."""

    connection: Connection | None
    redirect_url: str | None
    page_error: str | None = None


def connection_start(
    *,
    workspace: str,
    user_id: str,
    provider_name: str,
    scopes: list[str] | None,
    return_url: str,
    params: dict[str, Any] | None,
    actor: Actor,
    tags: dict[str, str] | None = None,
    connect_session_id: str | None = None,
) -> StartResult:
    """Create a pending connection and the authorization URL the user must visit.
    `tags` and `connect_session_id` come from a connect session (issue 16)."""
    provider = provider_get_by_name(provider_name, workspace=workspace, environment=actor.environment)
    try:
        validate_return_url(return_url)
    except ReturnUrlError as exc:
        raise InvalidRequest(str(exc), details={"return_url": [str(exc)]}) from None
    try:
        spec, _hooks = resolve(provider, params)
    except ProviderConfigError as exc:
        raise InvalidRequest(str(exc), details={"params": [str(exc)]}) from None
    requested = list(dict.fromkeys(scopes)) if scopes else list(spec.default_scopes)

    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    nonce = secrets.token_urlsafe(24) if spec.oidc and "openid" in requested else None
    connection = Connection(
        workspace=workspace,
        environment=actor.environment,
        user_id=user_id,
        provider=provider,
        scopes=requested,
        params=params or {},
        return_url=return_url,
        state_digest=crypto.digest(state),
        state_expires_at=timezone.now() + timedelta(seconds=settings.OAUTH_STATE_TTL_SECONDS),
        nonce_digest=crypto.digest(nonce) if nonce else "",
        tags=tags or {},
        connect_session_id=connect_session_id,
    )
    connection.pkce_verifier_enc = crypto.encrypt(verifier, aad=connection.aad("pkce_verifier"))
    auth_url = client.authorize_url(
        spec,
        redirect_uri=callback_url(),
        scopes=requested,
        state=state,
        code_challenge=client.pkce_challenge(verifier),
        nonce=nonce,
    )
    connection_create(connection=connection, actor=actor)
    return StartResult(connection=connection, auth_url=auth_url, state=state)


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _claim_state(state: str) -> tuple[Connection | None, str | None]:
    """Consume the state (single use) and return its connection, or a page error."""
    with transaction.atomic():
        connection = (
            Connection.objects.select_for_update()
            .select_related("provider")
            .filter(state_digest=crypto.digest(state))
            .first()
        )
        if connection is None:
            return None, "unknown_state"
        connection.state_digest = None
        connection.save(update_fields=["state_digest", "updated_at"])
    if connection.status != Connection.Status.PENDING:
        return None, "state_already_used"
    return connection, None


def _error_redirect(connection: Connection, error: str) -> CallbackOutcome:
    return CallbackOutcome(
        connection=connection,
        redirect_url=with_query(
            connection.return_url, {"status": "error", "error": safe_code(error), "connection_id": connection.id}
        ),
    )


_CALLBACK_VALUE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def callback_metadata(spec, callback_params: Mapping[str, str] | None) -> dict[str, str]:
    """The callback query parameters the catalog names (QuickBooks' realmId), when plain."""
    if not callback_params:
        return {}
    return {
        name: callback_params[name]
        for name in spec.callback_params
        if isinstance(callback_params.get(name), str) and _CALLBACK_VALUE.match(callback_params[name])
    }


def userinfo_account(spec, access_token: str | None) -> dict[str, Any]:
    """`{"userinfo": {…}}`: the account id the provider's userinfo endpoint names, for templates
    whose `account_id_field` is "userinfo.PATH" (GitHub, Zoom, Atlassian …), kept on the
    connection so that a reconnect can prove the account; {} for the other templates. Best
    effort at the first consent: an endpoint that fails leaves it out (that connection's
    reconnect then ends `account_unverifiable`); reconnect itself fetches it strictly."""
    if not spec.account_id_field.startswith("userinfo.") or not access_token:
        return {}
    try:
        document = client.userinfo(spec, access_token=access_token)
    except OAuthError as exc:
        logger.warning("userinfo unavailable: the account id is not recorded", extra={"error_code": exc.error})
        return {}
    record = userinfo_record(spec.account_id_field, document)
    return {"userinfo": record} if record else {}


def connection_complete(
    *,
    state: str | None,
    code: str | None,
    iss: str | None,
    error: str | None,
    error_description: str | None,
    callback_params: Mapping[str, str] | None = None,
) -> CallbackOutcome:
    """Handle the provider's redirect: check state and iss, exchange the code (PKCE),
    verify the id_token, store the tokens, activate the connection."""
    if not state:
        return CallbackOutcome(None, None, "missing_state")
    connection, page_error = _claim_state(state)
    if connection is None:
        return CallbackOutcome(None, None, page_error)
    if connection.state_expires_at and connection.state_expires_at < timezone.now():
        connection_fail(connection=connection, error="state_expired", description="the consent took too long")
        return _error_redirect(connection, "state_expired")
    if error:
        connection_fail(connection=connection, error=error, description=error_description or "")
        return _error_redirect(connection, error)
    try:
        spec, hooks = resolve(connection.provider, connection.params)
    except ProviderConfigError:
        connection_fail(connection=connection, error="provider_misconfigured")
        return _error_redirect(connection, "provider_misconfigured")
    if iss is None and oidc.callback_iss_required(spec):  # RFC 9207 §2.4
        connection_fail(connection=connection, error="invalid_issuer", description="the response has no iss parameter")
        return _error_redirect(connection, "invalid_issuer")
    if iss is not None and spec.issuer and iss != spec.issuer and "{tenantid}" not in spec.issuer:
        connection_fail(
            connection=connection, error="invalid_issuer", description="the iss parameter names another issuer"
        )
        return _error_redirect(connection, "invalid_issuer")
    if not code:
        connection_fail(connection=connection, error="missing_code")
        return _error_redirect(connection, "missing_code")
    verifier = crypto.decrypt(connection.pkce_verifier_enc, aad=connection.aad("pkce_verifier"))
    try:
        tokens = client.exchange_code(spec, hooks, code=code, redirect_uri=callback_url(), code_verifier=verifier)
    except OAuthError as exc:
        connection_fail(connection=connection, error="code_exchange_failed", description=exc.error)
        return _error_redirect(connection, "code_exchange_failed")
    claims = None
    if tokens.id_token and spec.oidc:
        try:
            claims = oidc.verify_id_token(spec, hooks, tokens.id_token, nonce_digest=connection.nonce_digest or None)
        except (IdTokenError, oidc.DocumentUnavailable) as exc:
            connection_fail(connection=connection, error="invalid_id_token", description=str(exc))
            return _error_redirect(connection, "invalid_id_token")
    elif spec.oidc and connection.nonce_digest:
        connection_fail(
            connection=connection, error="missing_id_token", description="the provider returned no id_token"
        )
        return _error_redirect(connection, "missing_id_token")
    extra_metadata = callback_metadata(spec, callback_params)
    if extra_metadata:
        tokens = replace(tokens, metadata={**tokens.metadata, **extra_metadata})
    account = {**tokens.account, **hooks.account(spec, claims), **userinfo_account(spec, tokens.access_token)}
    if not connection_activate(connection=connection, tokens=tokens, account=account):
        return CallbackOutcome(None, None, "state_already_used")
    return CallbackOutcome(
        connection=connection,
        redirect_url=with_query(connection.return_url, {"status": "success", "connection_id": connection.id}),
    )
