"""The device authorization grant (RFC 8628): for agents with no browser redirect.

`device_start` asks the provider for a device code and a user code and creates a pending
connection (flow "device") holding the device code encrypted. Nothing polls in a request
thread: beat runs `device_poll_sweep` every DEVICE_POLL_SWEEP_SECONDS, which claims the
pending device connections whose poll is due (`device_next_poll_at`, FOR UPDATE SKIP
LOCKED) and queues one `device_poll` task per id. The schedule lives in the row, so a
broker or worker restart loses nothing: a claim whose task died lapses and the row is
polled again.

One poll (`device_poll_one`, under the row lock, so two workers never poll one code):
authorization_pending → next poll after `interval`; slow_down → interval + 5 s (§3.5);
an outage → retried after `interval`, the connection stays pending; expired_token,
access_denied or any other refusal → failed with that code; the device code's expiry
reached → failed `expired_token` with no request to the provider; tokens → the id_token is
verified as in the code flow and the connection activated (same events and webhooks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from broker_app import crypto
from broker_app.audit import Actor
from broker_app.models import Connection
from broker_app.oauth import client, oidc
from broker_app.oauth.errors import IdTokenError, PermanentOAuthError, TransientOAuthError
from broker_app.providers.registry import resolve
from broker_app.providers.spec import ProviderConfigError
from broker_app.queue import task
from broker_app.selectors import provider_get_by_name
from broker_app.services.connect import userinfo_account
from broker_app.services.lifecycle import connection_activate, connection_create, connection_fail
from dromos.errors import InvalidRequest, ProviderError, ProviderUnavailable

logger = logging.getLogger(__name__)
FLOW = "device"
SLOW_DOWN_SECONDS = 5  # RFC 8628 §3.5
# How long a sweep's claim keeps a row from being queued again; a poll task lost with its
# worker is re-queued once it lapses.
CLAIM_SECONDS = 60


@dataclass(frozen=True)
class DeviceStart:
    connection: Connection
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: datetime
    interval: int

    def as_dict(self) -> dict:
        body = {
            "connection_id": self.connection.id,
            "provider_id": str(self.connection.provider_id),
            "scopes": self.connection.scopes,
            "user_code": self.user_code,
            "verification_uri": self.verification_uri,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z"),
            "interval": self.interval,
        }
        if self.verification_uri_complete:
            body["verification_uri_complete"] = self.verification_uri_complete
        return body


def device_start(
    *,
    workspace: str,
    user_id: str,
    provider_name: str,
    scopes: list[str] | None,
    params: dict | None,
    actor: Actor,
) -> DeviceStart:
    """Create a pending device connection and the code the user confirms at the provider."""
    provider = provider_get_by_name(provider_name, workspace=workspace, environment=actor.environment)
    try:
        spec, _hooks = resolve(provider, params)
    except ProviderConfigError as exc:
        raise InvalidRequest(str(exc), details={"params": [str(exc)]}) from None
    if not spec.device_authorization_url:
        raise InvalidRequest(
            f"{provider.name} does not support the device flow (no device authorization endpoint)",
            details={"flow": ["this provider does not support the device flow"]},
        )
    requested = list(dict.fromkeys(scopes)) if scopes else list(spec.default_scopes)
    try:
        answer = client.device_authorize(spec, scopes=requested)
    except TransientOAuthError as exc:
        raise ProviderUnavailable(
            f"{provider.name} did not answer the device authorization request ({exc.error})",
            retry_after=exc.retry_after,
        ) from None
    except PermanentOAuthError as exc:
        raise ProviderError(f"{provider.name} refused the device authorization request ({exc.error})") from None
    digest = crypto.digest(answer["device_code"])
    if Connection.objects.filter(device_code_digest=digest).exists():
        # A device code serves one connection only (RFC 8628 §3.2: unique per request).
        raise ProviderError(f"{provider.name} returned a device code already used by another connection")
    now = timezone.now()
    expires_at = now + timedelta(seconds=answer["expires_in"])
    connection = Connection(
        workspace=workspace,
        environment=actor.environment,
        user_id=user_id,
        provider=provider,
        scopes=requested,
        params=params or {},
        return_url="",
        flow=FLOW,
        state_expires_at=expires_at,
        device_code_digest=digest,
        device_interval=answer["interval"],
        device_next_poll_at=min(now + timedelta(seconds=answer["interval"]), expires_at),
    )
    connection.device_code_enc = crypto.encrypt(answer["device_code"], aad=connection.aad("device_code"))
    connection_create(connection=connection, actor=actor)
    return DeviceStart(
        connection=connection,
        user_code=answer["user_code"],
        verification_uri=answer["verification_uri"],
        verification_uri_complete=answer["verification_uri_complete"],
        expires_at=expires_at,
        interval=answer["interval"],
    )


def _due(now: datetime):
    return Connection.objects.filter(
        status=Connection.Status.PENDING, flow=FLOW, device_next_poll_at__isnull=False, device_next_poll_at__lte=now
    )


def device_poll_sweep(*, limit: int = 500, enqueue: bool = True) -> list[str]:
    """Claim the device connections whose poll is due and queue one poll task each
    (`enqueue=False`: claim only, for tests and the caller that polls itself)."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            _due(now)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("device_next_poll_at")
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            Connection.objects.filter(pk__in=ids).update(device_next_poll_at=now + timedelta(seconds=CLAIM_SECONDS))
        if ids and enqueue:
            transaction.on_commit(
                lambda: [task("device_poll").apply_async((cid,), expires=CLAIM_SECONDS) for cid in ids]
            )
    return ids


def _schedule(connection: Connection, *, now: datetime, interval: int) -> None:
    """The next poll: `interval` from now, but never past the device code's expiry (at
    which the poll fails the connection without calling the provider)."""
    next_poll = now + timedelta(seconds=interval)
    if connection.state_expires_at and next_poll > connection.state_expires_at:
        next_poll = connection.state_expires_at
    Connection.objects.filter(pk=connection.pk).update(
        device_interval=interval, device_next_poll_at=next_poll, updated_at=now
    )


def device_poll_one(*, connection_id: str) -> str:
    """One poll of one pending device connection (see the module docstring); returns what
    happened: skipped, pending, slow_down, retry, expired, failed or active."""
    with transaction.atomic():
        connection = (
            Connection.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("provider")
            .filter(pk=connection_id, status=Connection.Status.PENDING, flow=FLOW)
            .first()
        )
        if connection is None or not connection.device_code_enc:
            return "skipped"
        now = timezone.now()
        interval = connection.device_interval or client.DEVICE_DEFAULT_INTERVAL
        if connection.state_expires_at is None or connection.state_expires_at <= now:
            connection_fail(
                connection=connection, error="expired_token", description="the user code was not confirmed in time"
            )
            return "expired"
        try:
            spec, hooks = resolve(connection.provider, connection.params)
        except ProviderConfigError:
            connection_fail(connection=connection, error="provider_misconfigured")
            return "failed"
        device_code = crypto.decrypt(connection.device_code_enc, aad=connection.aad("device_code"))
        try:
            tokens = client.device_token(spec, hooks, device_code=device_code)
        except TransientOAuthError as exc:
            logger.info(
                "device poll: provider unavailable", extra={"connection_id": connection.id, "reason": exc.error}
            )
            _schedule(connection, now=now, interval=interval)
            return "retry"
        except PermanentOAuthError as exc:
            if exc.error == "authorization_pending":
                _schedule(connection, now=now, interval=interval)
                return "pending"
            if exc.error == "slow_down":
                _schedule(connection, now=now, interval=min(interval + SLOW_DOWN_SECONDS, settings.DEVICE_MAX_INTERVAL))
                return "slow_down"
            # Never the provider's description: it may echo what it received (the device code).
            connection_fail(connection=connection, error=exc.error, description=f"the provider answered {exc.error}")
            return "failed"
        claims = None
        if tokens.id_token and spec.oidc:
            try:
                claims = oidc.verify_id_token(spec, hooks, tokens.id_token, nonce_digest=None)
            except (IdTokenError, oidc.DocumentUnavailable) as exc:
                connection_fail(connection=connection, error="invalid_id_token", description=str(exc))
                return "failed"
        account = {**tokens.account, **hooks.account(spec, claims), **userinfo_account(spec, tokens.access_token)}
        connection_activate(connection=connection, tokens=tokens, account=account)
        return "active"
