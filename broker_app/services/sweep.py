"""Proactive refresh: the sweep selects what is due and fans out one task per id.

Selection walks the partial index `conn_active_expiry` (active rows with an expiry) in
expiry order with a keyset cursor and `FOR UPDATE SKIP LOCKED` batches, so one pass costs
in proportion to the rows due, not the rows stored. Each selected row is claimed in the same
transaction (next_refresh_attempt_at moved CLAIM_SECONDS ahead), so two sweepers running at
once never queue the same connection, and a task lost with its worker is re-queued by a
later sweep once the claim lapses. Tasks are queued after commit, carry only the id, and
expire with the claim (a newer sweep has queued the row again by then).

The task goes through the single-flight refresh service, which re-checks under the row lock
that the refresh is still due. A per-provider limit (a Redis lease set) bounds how many
refreshes run against one provider at once.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from broker_app import metrics
from broker_app.models import Connection
from broker_app.queue import task
from broker_app.services.refresh import RefreshOutcome, idle_days, next_attempt, token_refresh_due
from broker_app.services.refresh_policy import proactive_due, renewable
from dromos import redis as shared_redis
from dromos.wire import MACHINE_FLOWS

logger = logging.getLogger(__name__)
CLAIM_SECONDS = 300
# A lease older than this is from a process that died mid-refresh: its slot is free again.
LEASE_SECONDS = 90

__all__ = ["CLAIM_SECONDS", "SweepResult", "batch_queryset", "due_queryset", "refresh_one", "sweep_due"]


@dataclass
class SweepResult:
    selected: int = 0
    queued: int = 0
    batches: int = 0
    connection_ids: list[str] = field(default_factory=list)


def due_queryset(*, now: datetime, window_seconds: int, provider_name: str | None = None) -> QuerySet[Connection]:
    """Active connections with a refresh token whose access token expires within the window
    and that no earlier sweep has claimed (nor a backoff deferred). Tokens without an expiry
    are never due: nothing tells when to refresh them, so they are not refreshed in a loop."""
    queryset = (
        Connection.objects.filter(
            status=Connection.Status.ACTIVE,
            expires_at__isnull=False,
            expires_at__lte=now + timedelta(seconds=window_seconds),
        )
        .filter(~Q(refresh_token_enc="") | Q(flow__in=MACHINE_FLOWS))
        .filter(Q(next_refresh_attempt_at__isnull=True) | Q(next_refresh_attempt_at__lte=now))
    )
    if provider_name:
        queryset = queryset.filter(provider__name__iexact=provider_name)
    return queryset


def batch_queryset(
    *,
    now: datetime,
    window_seconds: int,
    provider_name: str | None = None,
    cursor: datetime | None = None,
    seen_at_cursor: list[str] | None = None,
    lock: bool = True,
) -> QuerySet:
    """One sweep batch (slice it): (id, expires_at) of due rows in index order from the cursor
    on, skipping rows locked elsewhere (lock=True also locks the ones it returns)."""
    queryset = due_queryset(now=now, window_seconds=window_seconds, provider_name=provider_name)
    if cursor is not None:
        queryset = queryset.filter(expires_at__gte=cursor)
        if seen_at_cursor:
            queryset = queryset.exclude(id__in=seen_at_cursor)
    if lock:
        queryset = queryset.select_for_update(skip_locked=True, of=("self",))
    return queryset.order_by("expires_at").values_list("id", "expires_at")


def sweep_due(
    *,
    window_seconds: int | None = None,
    provider_name: str | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    enqueue: bool = True,
    limit: int | None = None,
) -> SweepResult:
    """Select connections expiring within the window, claim them and (enqueue) queue one
    refresh task each. dry_run only lists them (no lock, no claim)."""
    window = settings.REFRESH_SWEEP_WINDOW_SECONDS if window_seconds is None else window_seconds
    batch = batch_size or settings.REFRESH_SWEEP_BATCH
    result = SweepResult()
    now = timezone.now()
    # Keyset cursor: the last expiry seen and the ids seen at exactly that expiry. Each batch
    # reads the partial index in its own order from the cursor on (no sort, no re-reading of
    # earlier batches), so a sweep costs in proportion to the rows due.
    cursor: datetime | None = None
    seen_at_cursor: list[str] = []
    while limit is None or result.selected < limit:
        take = batch if limit is None else min(batch, limit - result.selected)
        with transaction.atomic():
            queryset = batch_queryset(
                now=now,
                window_seconds=window,
                provider_name=provider_name,
                cursor=cursor,
                seen_at_cursor=seen_at_cursor,
                lock=not dry_run,
            )
            rows = list(queryset[:take])
            if not rows:
                break
            ids = [cid for cid, _ in rows]
            last = rows[-1][1]
            at_last = [cid for cid, expires_at in rows if expires_at == last]
            seen_at_cursor = seen_at_cursor + at_last if last == cursor else at_last
            cursor = last
            result.selected += len(ids)
            result.batches += 1
            result.connection_ids.extend(ids)
            if not dry_run:
                Connection.objects.filter(id__in=ids).update(
                    next_refresh_attempt_at=now + timedelta(seconds=CLAIM_SECONDS)
                )
                if enqueue:
                    transaction.on_commit(lambda ids=ids: _fan_out(ids))
                    result.queued += len(ids)
        if len(rows) < take:
            break
    if result.selected:
        logger.info("refresh sweep", extra={"selected": result.selected, "queued": result.queued, "dry_run": dry_run})
    return result


def _fan_out(ids: list[str]) -> None:
    """One task per id, sharing one producer; a task older than the claim is dropped."""
    refresh_connection = task("refresh_connection")
    with refresh_connection.app.producer_or_acquire() as producer:
        for connection_id in ids:
            refresh_connection.apply_async((connection_id,), producer=producer, expires=CLAIM_SECONDS)


# -- per-provider concurrency ------------------------------------------------------------------

_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t, ARGV[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
return 0
"""
_redis = shared_redis.client  # None without Redis


def provider_limit(provider: str) -> int:
    """Concurrent refreshes allowed against one provider (REFRESH_PROVIDER_CONCURRENCY, or a
    per-provider value in REFRESH_PROVIDER_CONCURRENCY_OVERRIDES)."""
    overrides = settings.REFRESH_PROVIDER_CONCURRENCY_OVERRIDES or {}
    return int(overrides.get(provider, settings.REFRESH_PROVIDER_CONCURRENCY))


def _lease_acquire(provider: str) -> tuple[str, str] | None | bool:
    """A lease on one of the provider's slots: (key, member); None without Redis; False when full."""
    client = _redis()
    if client is None:
        return None
    key, member = f"dromos:refresh-slots:{provider}", uuid.uuid4().hex
    if client.eval(_ACQUIRE, 1, key, provider_limit(provider), member, LEASE_SECONDS):
        return key, member
    return False


def _lease_release(lease: tuple[str, str]) -> None:
    try:
        _redis().zrem(*lease)
    except Exception:  # the lease expires by itself
        logger.warning("could not release a provider slot")


def refresh_one(*, task, connection_id: str) -> str:
    """Body of the refresh task: skip what is no longer due, respect the provider's
    concurrency limit, refresh through the single-flight service. A transient failure is
    not retried here: the service deferred the row by a backoff with jitter and a later
    sweep queues it again then; a lock held by another refresh is retried shortly."""
    connection = (
        Connection.objects.filter(pk=connection_id)
        .select_related("provider")
        .only(
            "id",
            "status",
            "expires_at",
            "last_refreshed_at",
            "last_read_at",
            "refresh_failures",
            "refresh_token_enc",
            "flow",
            "provider",
        )
        .first()
    )
    if connection is None or connection.status != Connection.Status.ACTIVE:
        return "not_active"
    provider = connection.provider.name
    if not renewable(connection):
        metrics.refresh_outcome(provider, "skipped")
        return "skipped"
    if not proactive_due(connection, idle_days=idle_days(connection.provider)):
        # Not due (an idle connection's next keep-alive is later): park it until then, so
        # the sweep does not select it again every time its claim lapses.
        if not connection.refresh_failures:
            Connection.objects.filter(pk=connection_id, status=Connection.Status.ACTIVE).update(
                next_refresh_attempt_at=next_attempt(connection)
            )
        metrics.refresh_outcome(provider, "skipped")
        return "skipped"
    lease = _lease_acquire(provider)
    if lease is False:
        raise task.retry(countdown=random.uniform(0.2, 2.0), max_retries=None)
    try:
        result = token_refresh_due(connection_id=connection_id)
    finally:
        if lease:
            _lease_release(lease)
    if result.outcome == RefreshOutcome.LOCK_TIMEOUT:
        raise task.retry(countdown=random.uniform(5, 15))
    if result.outcome not in (RefreshOutcome.SUCCESS, RefreshOutcome.COALESCED, RefreshOutcome.SKIPPED):
        logger.info("sweep refresh not done", extra={"connection_id": connection_id, "outcome": result.outcome})
    return result.outcome.value
