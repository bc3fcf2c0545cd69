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


class DatabaseWrapper(base.DatabaseWrapper):
    _previous_request_at = float("-inf")

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
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
