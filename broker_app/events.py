"""Connection events (activated, failed, refreshed after failure, revoked).

The single hook point: services call `connection_event` after their transaction commits.
Every event is logged with the connection id and handed to the webhooks of the
connection's workspace. A webhook problem never fails the caller: the event already
happened, and deliveries are retried by their own tasks."""

from __future__ import annotations

import logging

from broker_app.webhooks import webhook_enqueue

logger = logging.getLogger("dromos.events")


def connection_event(*, connection_id: str, event: str) -> None:
    logger.info("connection event", extra={"connection_id": connection_id, "event": event})
    try:
        webhook_enqueue(connection_id=connection_id, event=event)
    except Exception:
        logger.exception("webhook enqueue failed", extra={"connection_id": connection_id, "event": event})
