"""Celery tasks. Thin, ids only, idempotent: each re-checks under the row lock that its
work is still due before acting."""

from __future__ import annotations

import logging

from celery import shared_task

from broker_app.services.audit_chain import audit_seal
from broker_app.services.audit_partitions import audit_partitions_maintain
from broker_app.services.device import device_poll_one
from broker_app.services.device import device_poll_sweep as device_sweep
from broker_app.services.expiry import grant_expiry_check
from broker_app.services.housekeeping import pending_prune, revocations_retry
from broker_app.services.sweep import refresh_one, sweep_due
from broker_app.webhooks import webhook_deliver
from broker_app.webhooks import webhook_requeue_stale as requeue

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def refresh_sweep() -> int:
    """Beat's periodic scan: claim what is due (SKIP LOCKED batches) and queue one
    refresh_connection per id. Safe to run twice at once."""
    return sweep_due().queued


# Retries here only wait for a free provider slot or a refresh in progress elsewhere (short
# countdowns); the sweep's claim bounds them through `expires`. Provider outages are retried
# by the sweep after the row's backoff, not by this task.
@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=100)
def refresh_connection(self, connection_id: str) -> str:
    return refresh_one(task=self, connection_id=connection_id)


@shared_task(acks_late=True, ignore_result=True)
def grant_expiry() -> int:
    """Beat: connection.expiring before a refresh token's end, connection.expired at it."""
    result = grant_expiry_check()
    return result.warned + result.expired


@shared_task(acks_late=True, ignore_result=True)
def prune_pending() -> int:
    return pending_prune()


@shared_task(acks_late=True, ignore_result=True)
def retry_revocations() -> int:
    return revocations_retry()


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=None)
def deliver_webhook(self, delivery_id: str) -> str:
    """One attempt at a webhook delivery; retried with exponential backoff until it is
    delivered or WEBHOOK_MAX_ATTEMPTS is reached (the row counts the attempts)."""
    result = webhook_deliver(delivery_id=delivery_id)
    if result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
    return result.status


@shared_task(acks_late=True, ignore_result=True)
def webhook_requeue_stale() -> int:
    return requeue()


@shared_task(acks_late=True, ignore_result=True)
def audit_partitions() -> int:
    """Create the audit table's partitions ahead, drop those past AUDIT_RETENTION_DAYS."""
    report = audit_partitions_maintain()
    return len(report.created) + len(report.dropped)


@shared_task(acks_late=True, ignore_result=True)
def audit_seal_chain() -> int:
    """Hash-chain the audit rows written since the last run (one sealer at a time)."""
    return audit_seal().sealed


@shared_task(acks_late=True, ignore_result=True)
def device_poll_sweep() -> int:
    """Beat's scan of pending device connections whose poll is due (RFC 8628)."""
    return len(device_sweep())


@shared_task(acks_late=True, ignore_result=True)
def device_poll(connection_id: str) -> str:
    return device_poll_one(connection_id=connection_id)
