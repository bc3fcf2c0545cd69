"""Connection-event webhooks: endpoints per workspace, signed deliveries, retries with backoff.

A delivery is a row first (payload without any token, attempt history), then a Celery task
that takes only the delivery id. Each attempt signs the exact body it sends:

    Dromos-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Receivers recompute the HMAC over the raw body, compare in constant time and reject
timestamps too far from their clock (replays); `verify_signature` is the reference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter

from broker_app import crypto
from broker_app.models import Connection, WebhookDelivery, WebhookEndpoint
from broker_app.presenters import connection_as_dict
from broker_app.queue import task
from dromos import wire
from dromos.backoff import exponential_backoff

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Dromos-Signature"
EVENTS = tuple(WebhookEndpoint.Event.values)

DELIVERIES = Counter(
    "dromos_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retry (non-2xx or network error, will retry), failed (gave up)",
    ["event", "outcome"],
)


class WebhookError(ValueError):
    """Bad endpoint input (URL, events); the message is safe to show."""


# -- signing -----------------------------------------------------------------------------------


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The Dromos-Signature header value for `body`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), f"{ts}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_seconds: int = 300, now: float | None = None
) -> bool:
    """True when `header` is a valid signature of `body` made within the tolerance."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        ts = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp=ts).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))


def endpoint_secret(endpoint: WebhookEndpoint) -> str:
    return crypto.decrypt(endpoint.secret_enc, aad=crypto.webhook_secret_aad(endpoint.pk)) or ""


# -- endpoints ---------------------------------------------------------------------------------


def _validate_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise WebhookError("url must be an absolute https URL")
    if parts.scheme == "http" and parts.hostname not in settings.WEBHOOK_ALLOW_HTTP_HOSTS:
        raise WebhookError("url must use https (plain http only for hosts in WEBHOOK_ALLOW_HTTP_HOSTS)")
    if parts.username or parts.password:
        raise WebhookError("url must not carry credentials")
    return url


def validate_events(events: list[str] | None) -> list[str]:
    unknown = sorted(set(events or []) - set(EVENTS))
    if unknown:
        raise WebhookError(f"unknown event {unknown[0]!r}; events: {', '.join(EVENTS)}")
    return sorted(set(events or []))


@transaction.atomic
def webhook_endpoint_create(
    *, workspace: str, url: str, events: list[str] | None = None, environment: str = wire.DEFAULT_ENVIRONMENT
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint for the workspace's environment (it hears about that environment's
    connections only); returns it with its signing secret (shown once, stored encrypted)."""
    workspace = workspace.strip()
    if not workspace:
        raise WebhookError("workspace is required")
    try:
        environment = wire.valid_environment(environment)
    except ValueError as exc:
        raise WebhookError(str(exc)) from None
    url = _validate_url(url)
    if WebhookEndpoint.objects.filter(workspace=workspace, environment=environment, url=url).exists():
        raise WebhookError(f"workspace {workspace} already has a webhook for this url")
    endpoint = WebhookEndpoint(workspace=workspace, environment=environment, url=url, events=validate_events(events))
    secret = "whsec_" + secrets.token_urlsafe(32)
    endpoint.secret_enc = crypto.encrypt(secret, aad=crypto.webhook_secret_aad(endpoint.pk))
    endpoint.save(force_insert=True)
    return endpoint, secret


@transaction.atomic
def webhook_secret_rotate(*, endpoint: WebhookEndpoint) -> str:
    """A new signing secret (returned once, stored encrypted); the old one stops signing at once."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    endpoint.secret_enc = crypto.encrypt(secret, aad=crypto.webhook_secret_aad(endpoint.pk))
    endpoint.save(update_fields=["secret_enc", "updated_at"])
    return secret


def webhook_endpoint_remove(*, endpoint: WebhookEndpoint) -> int:
    """Delete an endpoint and its delivery history; returns the number of deliveries dropped."""
    deliveries = endpoint.deliveries.count()
    endpoint.delete()
    return deliveries


# -- deliveries --------------------------------------------------------------------------------


def _payload(delivery_id: str, event: str, connection: Connection) -> dict:
    data = connection_as_dict(connection)
    data["workspace"] = connection.workspace
    return {"id": delivery_id, "type": event, "created_at": timezone.now(), "data": data}


def webhook_enqueue(*, connection_id: str, event: str) -> list[str]:
    """Record one delivery per interested endpoint and queue their tasks after commit."""
    connection = Connection.objects.select_related("provider").filter(pk=connection_id).first()
    if connection is None:
        return []
    endpoints = [
        e
        for e in WebhookEndpoint.objects.filter(
            workspace=connection.workspace, environment=connection.environment, enabled=True
        )
        if e.wants(event)
    ]
    ids: list[str] = []
    with transaction.atomic():
        for endpoint in endpoints:
            delivery = WebhookDelivery(
                endpoint=endpoint, event=event, connection_id=connection.id, next_attempt_at=timezone.now()
            )
            # Round-trip through JSON so the stored payload is exactly what is sent.
            delivery.payload = json.loads(json.dumps(_payload(str(delivery.id), event, connection), default=str))
            delivery.save(force_insert=True)
            ids.append(str(delivery.id))
        for delivery_id in ids:
            transaction.on_commit(lambda delivery_id=delivery_id: _queue(delivery_id))
    return ids


def _queue(delivery_id: str) -> None:
    try:
        # One attempt (no publish retries): this runs after a request's commit, and a delivery
        # that could not be queued is not lost.
        task("deliver_webhook").apply_async((delivery_id,), retry=False)
    except Exception:
        # The transport is down: the retry sweep picks the delivery up (next_attempt_at is set).
        logger.exception("webhook delivery not queued", extra={"delivery_id": delivery_id})


def _backoff(attempts: int) -> float:
    """Seconds before the next attempt: the base doubled per failed attempt, capped, less up
    to 20% jitter (so a burst of failures does not retry in lockstep), at least one second."""
    return round(
        exponential_backoff(
            attempts,
            base=settings.WEBHOOK_RETRY_BASE_SECONDS,
            cap=settings.WEBHOOK_RETRY_MAX_SECONDS,
            jitter=0.2,
            floor=1.0,
        ),
        3,
    )


@dataclass(frozen=True)
class AttemptResult:
    status: str
    retry_in: float | None = None


def webhook_deliver(*, delivery_id: str) -> AttemptResult:
    """One delivery attempt. The row stays locked during the POST so two workers never
    send the same delivery at once; a delivery no longer pending is left alone."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("endpoint")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None:
            return AttemptResult("busy_or_missing")
        if delivery.status != WebhookDelivery.Status.PENDING:
            return AttemptResult(delivery.status)
        endpoint = delivery.endpoint
        if not endpoint.enabled:
            delivery.status, delivery.last_error = WebhookDelivery.Status.FAILED, "endpoint disabled"
            delivery.next_attempt_at = None
            delivery.save(update_fields=["status", "last_error", "next_attempt_at"])
            return AttemptResult(delivery.status)
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Dromos-Webhooks/1.0",
            "Dromos-Event": delivery.event,
            "Dromos-Delivery": str(delivery.id),
            SIGNATURE_HEADER: sign(endpoint_secret(endpoint), body),
        }
        delivery.attempts += 1
        code, error = None, ""
        try:
            response = requests.post(
                endpoint.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=(3, settings.WEBHOOK_TIMEOUT_SECONDS),
            )
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code} {response.reason or ''}".strip()[:512]
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: could not reach the endpoint"
        delivery.last_status_code, delivery.last_error = code, error
        if not error:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = (
                WebhookDelivery.Status.DELIVERED,
                timezone.now(),
                None,
            )
            outcome, retry_in = "delivered", None
        elif delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
            delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.FAILED, None
            outcome, retry_in = "failed", None
        else:
            retry_in = _backoff(delivery.attempts)
            delivery.next_attempt_at = timezone.now() + timedelta(seconds=retry_in)
            outcome = "retry"
        delivery.save(
            update_fields=["status", "attempts", "last_status_code", "last_error", "next_attempt_at", "delivered_at"]
        )
    DELIVERIES.labels(event=delivery.event, outcome=outcome).inc()
    log = logger.info if outcome == "delivered" else logger.warning
    log(
        "webhook %s",
        outcome,
        extra={
            "delivery_id": str(delivery.id),
            "connection_id": delivery.connection_id,
            "event": delivery.event,
            "attempts": delivery.attempts,
            "status_code": code,
            "retry_in": retry_in,
        },
    )
    return AttemptResult(delivery.status, retry_in)


def webhook_requeue_stale(*, grace_seconds: int = 600, limit: int = 500) -> int:
    """Queue again pending deliveries whose retry is long overdue (their task was lost:
    the transport was down or flushed). Attempts stay bounded by WEBHOOK_MAX_ATTEMPTS."""
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    ids = list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lt=cutoff)
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
    for delivery_id in ids:
        _queue(str(delivery_id))
    return len(ids)


def webhook_redeliver(*, delivery: WebhookDelivery) -> bool:
    """Send a delivery again from scratch (operator action): attempts reset, queued now."""
    updated = WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now(), delivered_at=None
    )
    if updated:
        transaction.on_commit(lambda: _queue(str(delivery.pk)))
    return bool(updated)
