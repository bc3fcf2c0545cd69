"""Machine connections (issue 18): a token for an app itself, obtained without consent.

- `client_credentials` (RFC 6749 §4.4): with the provider app's client id and secret, or
  with a client id and secret given once in the request (this connection's own client);
  `scopes`, `audience` (Auth0) and `resource` (RFC 8707) are sent on every request.
- `jwt_bearer` (RFC 7523, Google service accounts): an assertion signed with the private key
  (the connection's, else the provider's), iss = client_id (the service account's email),
  aud = the token endpoint, `scope`, optional `sub` (a user to impersonate).
- `github_app`: the app's JWT (iss = client_id: the app's client id or app id) exchanged at
  `/app/installations/{installation_id}/access_tokens` for a one-hour installation token.

`machine_connection_create` obtains the first token before anything is stored: a bad
private key is a 400, a provider that is down a 503 (nothing stored either way); a provider
that refuses (wrong secret, unknown installation …) creates the connection `failed` with the
provider's error code, and nothing retries it. Once active, the token is re-obtained by the
refresh service (`refresh.py`: same row lock, single flight, coalescing, backoff, sweep and
`auto_refresh`) through `machine_token`; a refusal then fails the connection the same way.

A token without `expires_in` is stored without an expiry: it is served until the provider
refuses it (the API proxy's 401 re-obtains one, single-flight) or a caller asks
`POST /v1/refresh/{id}`; nothing re-requests it on a timer (decision: a made-up lifetime
would either hammer the provider or serve a dead token just the same).

Secrets given in the request (client_id, client_secret, private_key) are kept in
`grant_secret_enc` (one encrypted JSON object bound to the row, rotated by
`rotate_token_keys`), never answered, logged or shown in the admin."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from django.db import transaction

from broker_app import crypto
from broker_app.audit import Actor
from broker_app.models import Connection
from broker_app.oauth import assertions, client
from broker_app.oauth.errors import PermanentOAuthError, TransientOAuthError
from broker_app.oauth.tokens import TokenSet
from broker_app.providers.registry import private_key, resolve_machine
from broker_app.providers.spec import ProviderConfigError
from broker_app.selectors import provider_get_by_name
from broker_app.services.lifecycle import connection_activate, connection_create, connection_fail
from dromos import wire
from dromos.errors import InvalidRequest, ProviderUnavailable

logger = logging.getLogger(__name__)


def _secrets(connection: Connection) -> dict[str, str]:
    raw = crypto.decrypt(connection.grant_secret_enc, aad=connection.aad("grant_secret"))
    return json.loads(raw) if raw else {}


def machine_token(connection: Connection, spec, hooks) -> TokenSet:
    """One token request for a machine connection (the caller holds the row lock, or the
    row is not stored yet). Raises Permanent/TransientOAuthError as the provider answers;
    a provider without the private key it needs is a PermanentOAuthError (invalid_client)."""
    secrets = _secrets(connection)
    params = connection.grant_params or {}
    if connection.flow == wire.FLOW_CLIENT_CREDENTIALS:
        if secrets.get("client_id"):
            spec = replace(spec, client_id=secrets["client_id"], client_secret=secrets.get("client_secret"))
        return client.client_credentials(
            spec,
            hooks,
            scopes=list(connection.scopes),
            audience=params.get("audience"),
            resource=params.get("resource"),
        )
    pem = secrets.get("private_key") or private_key(connection.provider)
    issuer = secrets.get("client_id") or spec.client_id
    if not pem or not issuer:
        raise PermanentOAuthError("invalid_client", "no private key or client id is configured")
    try:
        if connection.flow == wire.FLOW_GITHUB_APP:
            return client.github_installation_token(
                spec, app_jwt=assertions.github_app_jwt(private_key_pem=pem, issuer=issuer)
            )
        assertion = assertions.jwt_bearer_assertion(
            private_key_pem=pem,
            issuer=issuer,
            audience=spec.token_url,
            scopes=list(connection.scopes),
            subject=params.get("subject"),
        )
    except assertions.PrivateKeyError as exc:  # a stored key that no longer loads
        raise PermanentOAuthError("invalid_client", str(exc)) from None
    return client.jwt_bearer(spec, hooks, assertion=assertion)


def _check_request(provider, spec, flow: str, grant: dict[str, str]) -> None:
    """Refuse, before anything is stored, what cannot work (400 invalid_request)."""
    if flow not in spec.grants:
        offered = ", ".join(spec.grants) or "none"
        raise InvalidRequest(
            f"{provider.name} does not support the {flow} flow (its machine flows: {offered})",
            details={"flow": [f"this provider does not support {flow}"]},
        )
    if flow == wire.FLOW_CLIENT_CREDENTIALS:
        missing = [name for name in spec.grant_requires if not grant.get(name)]
        if missing:
            raise InvalidRequest(
                f"{provider.name} needs {', '.join(missing)} for client_credentials",
                details={name: ["This field is required for this provider."] for name in missing},
            )
        if not grant.get("client_id") and not (spec.client_id and spec.client_secret):
            raise InvalidRequest(
                f"{provider.name} has no client secret configured; give client_id and client_secret",
                details={"client_id": ["the provider has no client credentials of its own"]},
            )
        return
    if "private_key" in grant:
        try:
            assertions.load_private_key(grant["private_key"])
        except assertions.PrivateKeyError as exc:
            raise InvalidRequest(str(exc), details={"private_key": [str(exc)]}) from None
    elif not provider.private_key_enc:
        raise InvalidRequest(
            f"{provider.name} has no private key configured; give private_key",
            details={"private_key": ["the provider has no private key of its own"]},
        )
    if not (grant.get("client_id") or spec.client_id):
        raise InvalidRequest(
            f"{provider.name} has no client id configured; give client_id (the JWT's issuer)",
            details={"client_id": ["This field is required for this provider."]},
        )


def machine_connection_create(
    *,
    workspace: str,
    user_id: str,
    provider_name: str,
    flow: str,
    scopes: list[str] | None,
    params: dict | None,
    grant: dict[str, str],
    actor: Actor,
) -> Connection:
    """Create a machine connection and obtain its first token (see the module docstring).
    Returns the connection, `active`, or `failed` with the provider's error."""
    provider = provider_get_by_name(provider_name, workspace=workspace, environment=actor.environment)
    try:
        spec, hooks = resolve_machine(provider, params)
    except ProviderConfigError as exc:
        raise InvalidRequest(str(exc), details={"params": [str(exc)]}) from None
    _check_request(provider, spec, flow, grant)
    connection = Connection(
        workspace=workspace,
        environment=actor.environment,
        user_id=user_id,
        provider=provider,
        scopes=list(dict.fromkeys(scopes or [])),
        params=params or {},
        return_url="",
        flow=flow,
        grant_params={name: grant[name] for name in wire.GRANT_PARAM_FIELDS if grant.get(name)},
    )
    secrets = {name: grant[name] for name in wire.GRANT_SECRET_FIELDS if grant.get(name)}
    if "private_key" in secrets:
        secrets["private_key"] = assertions.normalised_pem(secrets["private_key"])
    if secrets:
        connection.grant_secret_enc = crypto.encrypt(json.dumps(secrets), aad=connection.aad("grant_secret"))
    try:
        tokens = machine_token(connection, spec, hooks)
    except TransientOAuthError as exc:
        raise ProviderUnavailable(
            f"{provider.name} did not answer the {flow} token request ({exc.error}); nothing was stored, retry later",
            retry_after=exc.retry_after or 5,
        ) from None
    except PermanentOAuthError as exc:
        with transaction.atomic():
            connection_create(connection=connection, actor=actor)
            # Never the provider's description: it may echo what it was sent.
            connection_fail(
                connection=connection,
                error=exc.error,
                description=f"the provider refused the {flow} token request ({exc.error})",
                actor=actor,
            )
        logger.info("machine connection refused", extra={"connection_id": connection.id, "reason": exc.error})
        return connection
    with transaction.atomic():
        connection_create(connection=connection, actor=actor)
        connection_activate(connection=connection, tokens=tokens, account={})
    connection.refresh_from_db()
    return connection
