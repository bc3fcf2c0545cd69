"""The proxy's audit rows (`gateway_app_proxycall`, issue 15), written off the request path.

A proxied call hands its row to this process's writer thread and returns; the thread writes
what has gathered in one transaction (one multi-row INSERT) at most `FLUSH_SECONDS` after the
first row of the batch arrived. The agent's call no longer waits for a database round trip
and its commit, and a busy process writes many rows per commit.

What this costs, stated in docs/api.md ("Audit and metrics"):
- a row appears up to `FLUSH_SECONDS` (0.1 s) after its call ended (longer while the
  database is unreachable: the rows wait, retried with backoff);
- a gateway process killed without warning (SIGKILL, OOM) loses the rows of its last
  `FLUSH_SECONDS`; an orderly exit (SIGTERM, a recycled worker, a deploy) writes
  every pending row first (atexit);
- at most `MAX_PENDING` rows wait (a database down for long under traffic): beyond it the
  oldest are dropped, logged and counted (`dromos_proxy_audit_dropped_total`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from functools import lru_cache
from multiprocessing.util import Finalize

from django.db import connection

from gateway_app.metrics import PROXY_AUDIT_DROPPED
from gateway_app.models import ProxyCall

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
BATCH_MAX = 500
MAX_PENDING = 50_000
_IDLE_CLOSE_SECONDS = 1.0  # the writer's database connection is closed after this long idle

_pending: deque[tuple] = deque()
_cond = threading.Condition()
_state = {"thread": None, "pid": None, "written": 0, "submitted": 0, "stop": False, "flushers": 0}


@lru_cache(maxsize=1)
def _columns() -> tuple[str, ...]:
    return tuple(f.name for f in ProxyCall._meta.concrete_fields if not f.primary_key)


@lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    meta, quote = ProxyCall._meta, connection.ops.quote_name
    columns = ", ".join(quote(ProxyCall._meta.get_field(name).column) for name in _columns())
    row = "(" + ", ".join(["%s"] * len(_columns())) + ")"
    # Identifiers come from the model (quoted), values are always parameters.
    return " ".join(("INSERT INTO", quote(meta.db_table), f"({columns})", "VALUES", ", ".join([row] * rows)))


def audit_submit(values: dict) -> None:
    """Queue one row (a dict of ProxyCall's fields); written by the writer thread."""
    row = tuple(values[name] for name in _columns())
    with _cond:
        if _state["pid"] != os.getpid():  # first row of this process (or a forked child)
            _pending.clear()
            _state.update(thread=None, pid=os.getpid(), written=0, submitted=0)
        if len(_pending) >= MAX_PENDING:
            _pending.popleft()
            PROXY_AUDIT_DROPPED.inc()
            _state["written"] += 1  # accounted for: flushes do not wait for it
            logger.error("proxy audit row dropped: too many rows waiting for the database")
        _pending.append(row)
        _state["submitted"] += 1
        thread = _state["thread"]
        if thread is None or not thread.is_alive():
            _state["stop"] = False
            thread = threading.Thread(target=_run, name="proxy-audit-writer", daemon=True)
            _state["thread"] = thread
            thread.start()
        # Wake the writer only when it waits for a first row or a batch is full: it gathers
        # the rest for FLUSH_SECONDS without being woken per row.
        if len(_pending) == 1 or len(_pending) >= BATCH_MAX:
            _cond.notify_all()


def audit_flush(timeout: float = 10.0) -> bool:
    """Wait until every row queued so far is written (tests; process exit). False on timeout."""
    deadline = time.monotonic() + timeout
    with _cond:
        if _state["pid"] != os.getpid():
            return True
        target = _state["submitted"]
        _state["flushers"] += 1
        _cond.notify_all()
        try:
            while _state["written"] < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                _cond.wait(min(remaining, 0.05))
        finally:
            _state["flushers"] -= 1
    return True


def audit_stop(timeout: float = 10.0) -> None:
    """Write what is pending, then end the writer thread (its connection closed). Tests."""
    audit_flush(timeout)
    with _cond:
        thread = _state["thread"]
        _state["stop"] = True
        _cond.notify_all()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def _run() -> None:
    failures = 0
    while True:
        with _cond:
            idle_since = time.monotonic()
            while not _pending and not _state["stop"]:
                if not _cond.wait(_IDLE_CLOSE_SECONDS) and time.monotonic() - idle_since >= _IDLE_CLOSE_SECONDS:
                    connection.close()  # idle: give the database its connection back
                    idle_since = time.monotonic()
            if not _pending and _state["stop"]:
                connection.close()
                return
            first = time.monotonic()
        # Gather for FLUSH_SECONDS (or until a batch is full), then write it.
        with _cond:
            while len(_pending) < BATCH_MAX and not _state["stop"]:
                remaining = FLUSH_SECONDS - (time.monotonic() - first)
                if remaining <= 0 or _state["flushers"]:
                    break
                _cond.wait(remaining)
            batch = [_pending.popleft() for _ in range(min(BATCH_MAX, len(_pending)))]
        try:
            _write(batch)
        except Exception:
            failures += 1
            logger.exception("proxy audit rows not written yet; retrying", extra={"rows": len(batch)})
            connection.close()
            with _cond:
                _pending.extendleft(reversed(batch))
                while len(_pending) > MAX_PENDING:
                    _pending.popleft()
                    PROXY_AUDIT_DROPPED.inc()
                    _state["written"] += 1
                _cond.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
            continue
        failures = 0
        with _cond:
            _state["written"] += len(batch)
            _cond.notify_all()


def _write(rows: list[tuple]) -> None:
    """One multi-row INSERT: a single statement, so atomic without a transaction of its own,
    and one round trip (a failed connection is closed by the caller, reopened on retry)."""
    at = _columns().index("created_at")
    adapt = connection.ops.adapt_datetimefield_value  # PostgreSQL: as is; SQLite: its text form
    params = [value for row in rows for value in (*row[:at], adapt(row[at]), *row[at + 1 :])]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(len(rows)), params)


atexit.register(audit_flush, 5.0)
# granian's workers are multiprocessing children, which leave through os._exit without running
# atexit: multiprocessing runs its own finalizers there (a second flush finds nothing left).
Finalize(None, audit_flush, args=(5.0,), exitpriority=10)
