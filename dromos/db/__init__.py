"""PostgreSQL database backend for Dromos (ENGINE "dromos.db": see base.py) and the
helper the hot path runs its few fixed statements through."""

from __future__ import annotations

from typing import Any


def execute_fixed(sql: str, params: list[Any], *, fetch: bool = False) -> tuple | None:
    """Run one fixed statement of a hot path (written once, run on every request) on the
    default database; return its first row when `fetch`. On PostgreSQL it runs as a prepared
    statement (parsed and planned once per connection): for the token read's join that
    saves more database CPU than the execution itself costs (issue 7). Elsewhere (the
    embedded SQLite default) it is an ordinary query."""
    from django.db import DEFAULT_DB_ALIAS, connections

    connection = connections[DEFAULT_DB_ALIAS]  # once: each attribute of django.db.connection looks it up again
    prepared_cursor = getattr(connection, "prepared_cursor", None)
    if prepared_cursor is None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone() if fetch else None
    with prepared_cursor() as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchone() if fetch else None
