"""Connections made with a static credential (issue 18): an API key or a login (HTTP Basic)
the user supplies instead of an OAuth consent.

The credential is stored like a token (encrypted, bound to the row, `token_type` "api_key" or
"basic") and served only by `GET /v1/token/{id}`. Before it is stored, the template's
`verify_url` is called with it: 2xx stores it; 401/403 is 400 `invalid_credentials` and
nothing is stored; no usable answer (outage, timeout, another status) is 503
`provider_unavailable` and nothing is stored either: an unverified key is never stored
silently (retry later). A template without `verify_url` stores the credential unverified."""

from __future__ import annotations

import json
import logging

from django.db import transaction

from broker_app.audit import Actor
from broker_app.models import Connection
from broker_app.oauth import client
from broker_app.oauth.errors import TransientOAuthError
from broker_app.providers.registry import resolve_static
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import connection_get, provider_get_by_name
from broker_app.services.lifecycle import connection_create_static, connection_replace_credential
from dromos.errors import InvalidCredentials, InvalidRequest, ProviderUnavailable

logger = logging.getLogger(__name__)


def _checked(provider, params: dict | None, credentials: dict[str, str]) -> str:
    """Verify the credential for `provider`; return it as stored (the key, or the login as JSON)."""
    try:
        spec = resolve_static(provider, params)
    except ProviderConfigError as exc:
        raise InvalidRequest(str(exc), details={"params": [str(exc)]}) from None
    if spec.auth_mode != credentials["type"]:
        wanted = "an OAuth consent (request-connection)" if spec.auth_mode == "oauth2" else spec.auth_mode
        raise InvalidRequest(
            f"{provider.name} takes {wanted}, not {credentials['type']} credentials",
            details={"credentials": [f"this provider takes {spec.auth_mode}"]},
        )
    if spec.verify_url:
        try:
            good = client.verify_credential(spec, credentials)
        except TransientOAuthError as exc:
            raise ProviderUnavailable(
                f"{provider.name} could not verify the credentials ({exc.error}); nothing was stored, retry later"
            ) from None
        if not good:
            raise InvalidCredentials(f"{provider.name} refused the credentials; nothing was stored")
    if credentials["type"] == "basic":
        return json.dumps({"username": credentials["username"], "password": credentials["password"]})
    return credentials["api_key"]


def static_connection_create(
    *, workspace: str, user_id: str, provider_name: str, params: dict | None, credentials: dict[str, str], actor: Actor
) -> Connection:
    provider = provider_get_by_name(provider_name, workspace=workspace, environment=actor.environment)
    stored = _checked(provider, params, credentials)
    connection = Connection(
        workspace=workspace,
        environment=actor.environment,
        user_id=user_id,
        provider=provider,
        scopes=[],
        params=params or {},
        return_url="",
        flow=credentials["type"],
        token_type=credentials["type"],
    )
    connection_create_static(connection=connection, credential=stored, actor=actor)
    return connection


def static_credentials_replace(
    *, connection_id: str, workspace: str, credentials: dict[str, str], actor: Actor
) -> Connection:
    """Replace the credential of a static connection in place (same id), verified first."""
    connection = connection_get(connection_id=connection_id, workspace=workspace, environment=actor.environment)
    if connection.flow not in ("api_key", "basic"):
        raise InvalidRequest("this connection was made by OAuth consent; its tokens cannot be replaced")
    stored = _checked(connection.provider, connection.params, credentials)
    with transaction.atomic():
        locked = Connection.objects.select_for_update().select_related("provider").get(pk=connection.pk)
        connection_replace_credential(connection=locked, credential=stored, token_type=credentials["type"], actor=actor)
    return locked
