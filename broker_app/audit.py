"""The audit trail: every state change and every token read, never a token."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from django.db import connection as db_connection
from django.utils import timezone

from broker_app.models import AuditEvent
from dromos import wire
from dromos.db import execute_fixed


@dataclass(frozen=True)
class Actor:
    """Who is acting: `apikey:<prefix>`, `admin:<username>`, `broker-api`, `system`."""

    name: str
    workspace: str = ""
    ip: str | None = None
    # The environment of the workspace the actor works in (issue 19): services scope their
    # lookups to (workspace, environment).
    environment: str = wire.DEFAULT_ENVIRONMENT


SYSTEM = Actor("system")
SWEEP = Actor("system:refresh-sweep")  # the proactive refresh (sweep tasks, `refresh_due`)


# The columns a token read writes, in the order its INSERTs give them (also selectors._token_read_statement).
COLUMNS = ("connection_id", "workspace", "environment", "actor", "action", "ip", "detail", "created_at")


@lru_cache(maxsize=1)
def _insert() -> tuple[str, tuple]:
    meta, quote = AuditEvent._meta, db_connection.ops.quote_name
    fields = tuple(meta.get_field(name) for name in COLUMNS)
    columns = ", ".join(quote(field.column) for field in fields)
    if db_connection.vendor == "postgresql":
        # ip and detail arrive as text and are cast by the server (audit_record, issue 20).
        placeholders = ", ".join(
            "%s::inet" if f.name == "ip" else "%s::jsonb" if f.name == "detail" else "%s" for f in fields
        )
    else:
        placeholders = ", ".join(["%s"] * len(fields))
    # Identifiers come from the model (quoted), values are always parameters.
    return " ".join(("INSERT INTO", quote(meta.db_table), f"({columns})", "VALUES", f"({placeholders})")), fields


def audit_record(
    *,
    connection_id: str,
    workspace: str,
    actor: Actor,
    action: str,
    detail: dict[str, Any] | None = None,
    environment: str | None = None,
) -> None:
    """One INSERT, nothing read back: every token read writes one of these (issue 7).
    `environment`: the row's (a connection's own); None: the actor's, when a workspace is named."""
    sql, fields = _insert()
    if environment is None:
        environment = actor.environment if workspace else ""
    now = timezone.now()
    if db_connection.vendor == "postgresql":
        # Plain text for the address and the JSON, cast by PostgreSQL (which stores an inet
        # and a jsonb in their canonical forms whatever the spelling): building psycopg's
        # Inet and Jsonb adapters through the fields cost as much client CPU as the rest of
        # the INSERT (issue 20).
        detail_text = orjson.dumps(detail, option=orjson.OPT_NON_STR_KEYS).decode() if detail else "{}"
        execute_fixed(
            sql, [connection_id, workspace, environment, actor.name[:128], action, actor.ip or None, detail_text, now]
        )
        return
    values = (connection_id, workspace, environment, actor.name[:128], action, actor.ip, detail or {}, now)
    # The fields' own preparation (JSON adapter, IP normalisation): stored exactly as the ORM stores it.
    execute_fixed(
        sql, [field.get_db_prep_save(value, db_connection) for field, value in zip(fields, values, strict=True)]
    )
