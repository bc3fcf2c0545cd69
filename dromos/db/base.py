"""Django's PostgreSQL backend with a health check that is not paid on every request, and
prepared statements for the hot path's fixed statements (see dromos.db.execute_fixed).

With CONN_HEALTH_CHECKS Django pings a persistent connection (SELECT 1) before the first
query of every request. Under load a connection is reused many times a second and the
ping is one more round trip per request: on the token path, a tenth of the database work
(issue 7). Here a connection is pinged only when its previous request began more than
DB_HEALTH_CHECK_IDLE_SECONDS ago (default 1): an idle connection is the kind that a
database restart, a failover or an idle timeout cuts unnoticed. A connection cut in the
middle of the load fails the request that is using it either way, as with Django's check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db.backends.postgresql import base
from psycopg import errors, pq
from psycopg.adapt import Transformer


class DatabaseWrapper(base.DatabaseWrapper):
    _previous_request_at = float("-inf")
    _statements: frozenset[bytes] = frozenset()  # prepared by fetch_prepared on this connection

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        self._statements = frozenset()
        # Django turns psycopg's automatic preparation off (transaction-mode poolers lose
        # prepared statements). Prepare only what asks for it (prepared_cursor), unless
        # DB_PREPARED_STATEMENTS=false (a transaction-mode PgBouncer older than 1.21).
        if connection.prepare_threshold is None and self.settings_dict.get("PREPARED_STATEMENTS", True):
            connection.prepare_threshold = 2**31 - 1
        return connection

    def close_if_health_check_failed(self) -> None:
        if self.connection is None or self.health_check_done or not self.health_check_enabled:
            return super().close_if_health_check_failed()
        now = time.monotonic()
        idle = now - self._previous_request_at
        self._previous_request_at = now
        if idle < float(self.settings_dict.get("HEALTH_CHECK_IDLE_SECONDS", 1.0)):
            self.health_check_done = True
            return None
        return super().close_if_health_check_failed()

    @contextmanager
    def prepared_cursor(self) -> Iterator[psycopg.Cursor]:
        """A psycopg cursor with server-side parameters, so that `execute(…, prepare=True)`
        can use a prepared statement (Django's own cursors bind parameters client-side and
        cannot). Same connection, transaction, health check and error translation as
        `cursor()`; not seen by Django's query logging."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        self.validate_no_broken_transaction()
        with self.wrap_database_errors, psycopg.Cursor(self.connection) as cursor:
            yield cursor

    def fetch_prepared(self, name: bytes, sql: bytes, params: list[str | None]) -> tuple | None:
        """Run one fixed statement of a hot path, prepared once per connection under `name`
        (`sql` with $n placeholders, every parameter as text, cast in the SQL), and return its
        first row, loaded as a psycopg cursor loads it (None: no row).

        One libpq call (PQexecPrepared, the GIL released while it waits) instead of a cursor:
        psycopg's cursor machinery cost more client CPU than the statement's own round trip
        on the token read (issue 20). Same connection, transaction, health check and error
        translation as `cursor()`; not seen by Django's query logging, execute wrappers or
        psycopg's tracing instrumentation, so callers take the cursor path when those
        listen (`fetch_prepared_usable`)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        self.validate_no_broken_transaction()
        with self.wrap_database_errors:
            connection = self.connection
            pgconn = connection.pgconn
            encoded = [None if value is None else value.encode() for value in params]
            if name not in self._statements:
                _check(pgconn.prepare(name, sql), pq.ExecStatus.COMMAND_OK, pgconn)
                self._statements |= {name}
            result = pgconn.exec_prepared(name, encoded)
            if (
                result.status == pq.ExecStatus.FATAL_ERROR
                and result.error_field(pq.DiagnosticField.SQLSTATE) == errors.InvalidSqlStatementName.sqlstate.encode()
            ):
                # Dropped behind our back (DISCARD ALL, a pooler): prepare it again, once.
                _check(pgconn.prepare(name, sql), pq.ExecStatus.COMMAND_OK, pgconn)
                result = pgconn.exec_prepared(name, encoded)
            _check(result, pq.ExecStatus.TUPLES_OK, pgconn)
            if not result.ntuples:
                return None
            loader = Transformer(connection)
            loader.set_pgresult(result)
            return loader.load_row(0, tuple)

    def fetch_prepared_usable(self) -> bool:
        """Whether fetch_prepared may run here: prepared statements allowed
        (DB_PREPARED_STATEMENTS) and nobody watching the queries (Django's query log, an
        execute wrapper, psycopg's tracing)."""
        return bool(
            self.settings_dict.get("PREPARED_STATEMENTS", True)
            and not self.queries_logged
            and not self.execute_wrappers
            and not _psycopg_traced()
        )


def _check(result: pq.abc.PGresult, expected: pq.ExecStatus, pgconn: pq.abc.PGconn) -> None:
    """Raise what psycopg's cursor would: OperationalError for a lost connection, the
    SQLSTATE's class otherwise."""
    if result.status == expected:
        return
    if pgconn.status == pq.ConnStatus.BAD:
        raise errors.OperationalError(pq.error_message(result))
    raise errors.error_from_result(result)


def _psycopg_traced() -> bool:
    """This process traces (dromos/tracing.py): psycopg's instrumentation sees cursors only."""
    from dromos import tracing

    return tracing.active()
