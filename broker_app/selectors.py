"""Reads. Every lookup on behalf of an agent is scoped to its workspace: another
workspace's connection id is indistinguishable from an unknown one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial

from django.db import DEFAULT_DB_ALIAS, connections
from django.db import connection as db_connection
from django.db.models import Q, QuerySet
from django.db.models.base import ModelState
from django.db.models.fields.json import KeyTextTransform
from django.db.models.signals import post_init, pre_init

from broker_app.audit import COLUMNS as AUDIT_COLUMNS
from broker_app.models import AuditEvent, Connection, Provider
from dromos import wire
from dromos.db import execute_fixed
from dromos.errors import InvalidRequest, NotFound

_PROVIDER_FIELD = Connection._meta.get_field("provider")


def _visible(workspace: str | None, environment: str | None) -> Q:
    """The provider rows a workspace's environment sees: the shared ones and its own."""
    shared = Q(workspace="", environment="")
    if not workspace:
        return shared
    return shared | Q(workspace=workspace, environment=environment or wire.DEFAULT_ENVIRONMENT)


def provider_get_by_name(name: object, *, workspace: str | None = None, environment: str | None = None) -> Provider:
    """The enabled provider `name` as the workspace's environment sees it: its own row when
    it has one (even a disabled one: a workspace that turns its app off does not fall back
    to the operator's), else the shared row."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("provider_name is required", details={"provider_name": ["required"]})
    provider = (
        Provider.objects.filter(_visible(workspace, environment), name__iexact=name.strip())
        .order_by("-workspace")  # an owned row ("ws") before the shared one ("")
        .first()
    )
    if provider is None or not provider.enabled:
        known = provider_names(workspace=workspace, environment=environment)
        raise InvalidRequest(
            f"unknown provider {name.strip()[:64]!r}; known providers: {', '.join(known) or 'none configured'}",
            details={"provider_name": ["unknown provider"]},
            known_providers=known,
        )
    return provider


def provider_names(*, workspace: str | None = None, environment: str | None = None) -> list[str]:
    return [p.name for p in provider_list(workspace=workspace, environment=environment)]


def provider_effective(*, workspace: str | None = None, environment: str | None = None) -> list[Provider]:
    """Per name, the row the workspace's environment uses (its own before the shared one),
    enabled or not, by name."""
    chosen: dict[str, Provider] = {}
    for provider in Provider.objects.filter(_visible(workspace, environment)).order_by("name", "-workspace"):
        chosen.setdefault(provider.name, provider)
    return list(chosen.values())


def provider_list(*, workspace: str | None = None, environment: str | None = None) -> list[Provider]:
    """The enabled providers the workspace's environment can connect to, by name."""
    return [p for p in provider_effective(workspace=workspace, environment=environment) if p.enabled]


def connection_get(*, connection_id: str, workspace: str | None, environment: str | None = None) -> Connection:
    """The connection, when it belongs to the workspace's environment (`environment` None:
    the default one); `workspace` None: any (an operator's call). Every column of it and of
    its provider, loaded as `Connection.objects.select_related("provider")` loads them, by a
    query written once (_connection_query): the ORM compiled it on every call, which was most
    of the broker's CPU for a proxy credential (issue 20)."""
    sql, fields, provider_fields = _connection_query(workspace is not None)
    row = execute_fixed(sql, _by_id_params(connection_id, workspace, environment), fetch=True)
    if row is None:
        raise NotFound("connection not found")
    database = connections[DEFAULT_DB_ALIAS]
    split = len(fields)
    connection = _loaded(Connection, database.alias, _converted(database.vendor, fields, row[:split]))
    provider = _loaded(Provider, database.alias, _converted(database.vendor, provider_fields, row[split:]))
    _PROVIDER_FIELD.set_cached_value(connection, provider)
    return connection


@lru_cache(maxsize=2)
def _connection_query(scoped: bool) -> tuple[str, tuple, tuple]:
    """SELECT every concrete column of the connection and of its provider (INNER JOIN: the
    foreign key is not nullable), by primary key, scoped to a workspace's environment when
    `scoped`."""
    quote = db_connection.ops.quote_name
    meta, provider_meta = Connection._meta, Provider._meta
    fields, provider_fields = tuple(meta.concrete_fields), tuple(provider_meta.concrete_fields)
    columns = [f"c.{quote(field.column)}" for field in fields] + [
        f"p.{quote(field.column)}" for field in provider_fields
    ]
    return _by_id(", ".join(columns), scoped), fields, provider_fields


def _by_id(columns: str, scoped: bool) -> str:
    """SELECT `columns` of a connection (alias c) joined to its provider (alias p), by
    primary key, and by workspace and environment when `scoped` (_by_id_params gives the
    values). Identifiers come from the models (quoted), values are always parameters."""
    quote = db_connection.ops.quote_name
    meta, provider_meta = Connection._meta, Provider._meta
    sql = " ".join(
        (
            f"SELECT {columns}",
            f"FROM {quote(meta.db_table)} c INNER JOIN {quote(provider_meta.db_table)} p",
            f"ON p.{quote(provider_meta.pk.column)} = c.{quote(_PROVIDER_FIELD.column)}",
            f"WHERE c.{quote(meta.pk.column)} = %s",
        )
    )
    if scoped:
        sql += f" AND c.{quote(meta.get_field('workspace').column)} = %s"
        sql += f" AND c.{quote(meta.get_field('environment').column)} = %s"
    return sql


def _by_id_params(connection_id: str, workspace: str | None, environment: str | None) -> list[str]:
    if workspace is None:
        return [connection_id]
    return [connection_id, workspace, environment or wire.DEFAULT_ENVIRONMENT]


def _converted(vendor: str, fields: tuple, values: tuple) -> dict:
    """{attname: value} with the conversions the ORM applies to each column (_conversions)."""
    loaded = {}
    for field, value, steps in zip(fields, values, _conversions(vendor, fields), strict=True):
        for step in steps:
            value = step(value)
        loaded[field.attname] = value
    return loaded


_TOKEN_FIELDS = (
    "id",
    "workspace",
    "environment",
    "status",
    "access_token_enc",
    "id_token_enc",
    "token_type",
    "expires_at",
    "scopes",
    "granted_scopes",
    "error",
    "refresh_token_enc",
    "flow",
    "token_version",
    "last_refreshed_at",
    "last_read_at",
    "refresh_failures",
    "provider",
)


@lru_cache(maxsize=2)
def _token_query(scoped: bool) -> tuple[str, tuple]:
    """The token path's one query, written once: compiling it with the ORM on every call
    cost more CPU than everything else the broker does for a token read (issue 7)."""
    quote = db_connection.ops.quote_name
    meta, provider_meta = Connection._meta, Provider._meta
    # In the model's field order: Model.from_db matches values to fields in that order.
    fields = tuple(field for field in meta.concrete_fields if field.name in _TOKEN_FIELDS)
    columns = ", ".join(f"c.{quote(field.column)}" for field in fields)
    return _by_id(f"{columns}, p.{quote(provider_meta.get_field('name').column)}", scoped), fields


@lru_cache(maxsize=4)
def _row_reader(vendor: str, epoch_micros: bool = False) -> tuple[tuple[str, ...], tuple]:
    """The token query's field names (attnames) and their conversions (_conversions)."""
    _, fields = _token_query(True)  # scoped or not: the same columns
    return tuple(field.attname for field in fields), _conversions(vendor, fields, epoch_micros)


@lru_cache(maxsize=16)
def _conversions(vendor: str, fields: tuple, epoch_micros: bool = False) -> tuple:
    """Per field, the conversions the ORM would apply to its column's value (the backend's
    converters, then the field's from_db_value), worked out once: on PostgreSQL psycopg
    returns Python values already and only the JSON fields convert; on SQLite a datetime
    column comes back naive (or as text) without them. `epoch_micros`: timestamps come as
    integer microseconds since the epoch (_read_columns)."""
    conversions = []
    for field in fields:
        steps = []
        if vendor != "postgresql":
            column = field.get_col(field.model._meta.db_table)
            steps += [
                partial(_backend_step, convert, column) for convert in db_connection.ops.get_db_converters(column)
            ]
        if epoch_micros and _is_timestamp(field):
            steps.append(_from_epoch_micros)
        if hasattr(field, "from_db_value"):
            steps.append(partial(_field_step, field))
        conversions.append(tuple(steps))
    return tuple(conversions)


def _backend_step(convert, column, value):
    return convert(value, column, db_connection)


def _field_step(field, value):
    return field.from_db_value(value, None, db_connection)


def _loaded(model, alias: str, values: dict):
    """A model instance as the ORM loads one with some fields deferred (Model.from_db), made
    directly: the same instance state (not adding, this database), the columns read set, every
    other field deferred (reading one loads it), without Model.__init__'s work field by field;
    from_db itself when a pre_init/post_init receiver listens for the model."""
    if pre_init.has_listeners(model) or post_init.has_listeners(model):
        return model.from_db(alias, list(values), list(values.values()))
    instance = model.__new__(model)
    state = ModelState()
    state.adding, state.db = False, alias
    instance._state = state
    instance.__dict__.update(values)
    return instance


@lru_cache(maxsize=1)
def _token_read_statement() -> bytes:
    """The scoped token query and its `token.read` audit row in ONE statement (issue 20): a
    data-modifying CTE inserts the row only when the read is the plain case — an active
    connection whose token stays valid past the threshold and whose last read was marked
    within the hour since its last refresh — and says whether it did. One round trip and one
    autocommit transaction: the row is committed before the token is decrypted, as before."""
    quote = db_connection.ops.quote_name
    meta, audit_meta = Connection._meta, AuditEvent._meta
    select, _ = _token_query(True)
    for number in (1, 2, 3):  # the scoped query's three parameters: id, workspace, environment
        select = select.replace("%s", f"${number}", 1)

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    def audit_column(name: str) -> str:
        return quote(audit_meta.get_field(name).column)

    # Identifiers come from the models (quoted), values are always parameters.
    sql = " ".join(
        (
            f"WITH c AS ({select}),",
            f"a AS (INSERT INTO {quote(audit_meta.db_table)} ({', '.join(map(audit_column, AUDIT_COLUMNS))})",
            f"SELECT c.{column('id')}, c.{column('workspace')}, c.{column('environment')},",
            "$4, $5, $6::inet, '{}'::jsonb, $7::timestamptz FROM c",
            f"WHERE c.{column('status')} = $8",
            f"AND (c.{column('expires_at')} IS NULL OR c.{column('expires_at')} > $9::timestamptz)",
            f"AND c.{column('last_read_at')} > $10::timestamptz",
            f"AND (c.{column('last_refreshed_at')} IS NULL",
            f"OR c.{column('last_read_at')} > c.{column('last_refreshed_at')})",
            "RETURNING 1)",
            f"SELECT {', '.join(_read_columns())}, EXISTS (SELECT FROM a) FROM c",  # noqa: S608  # nosec B608
        )
    )
    return sql.encode()


def _read_columns() -> list[str]:
    """The outer SELECT's columns: the token query's, timestamps as integer microseconds since
    the epoch (psycopg's text loader for timestamptz, as Django configures it, is Python code
    and was the larger part of loading the row, issue 20; the integer is exact)."""
    quote = db_connection.ops.quote_name
    _, fields = _token_query(True)
    columns = [
        f"(extract(epoch from c.{quote(f.column)}) * 1000000)::int8" if _is_timestamp(f) else f"c.{quote(f.column)}"
        for f in fields
    ]
    return [*columns, f"c.{quote(Provider._meta.get_field('name').column)}"]


def _is_timestamp(field) -> bool:
    return field.get_internal_type() == "DateTimeField"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _from_epoch_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def connection_for_token_read(
    *, connection_id: str, workspace: str, environment: str, audit: dict
) -> tuple[Connection, bool] | None:
    """The token path's connection (as connection_for_token) and, in the same statement, its
    `token.read` audit row when the read is the plain case (see _token_read_statement):
    (connection, audited). `audit`: actor, action, ip, created_at (text), status (the active
    one), fresh_after (the expiry the token must outlive) and marked_after (the last read
    that makes a new mark unnecessary), as ISO timestamps. None when this database cannot run it
    (SQLite, prepared statements off, queries watched): connection_for_token then.
    Raises NotFound as connection_for_token does."""
    database = connections[DEFAULT_DB_ALIAS]
    if database.vendor != "postgresql" or not database.fetch_prepared_usable():
        return None
    row = database.fetch_prepared(
        b"dromos_token_read",
        _token_read_statement(),
        [
            connection_id,
            workspace,
            environment,
            audit["actor"],
            audit["action"],
            audit["ip"],
            audit["created_at"],
            audit["status"],
            audit["fresh_after"],
            audit["marked_after"],
        ],
    )
    if row is None:
        raise NotFound("connection not found")
    return _connection_from_row(row[:-1], database, epoch_micros=True), row[-1]


def connection_for_token(*, connection_id: str, workspace: str | None, environment: str | None = None) -> Connection:
    """Only the columns the token path needs (the provider's name included), in one query.
    The other columns are deferred: reading one loads it. Scoped as connection_get."""
    sql, _ = _token_query(workspace is not None)
    row = execute_fixed(sql, _by_id_params(connection_id, workspace, environment), fetch=True)
    if row is None:
        raise NotFound("connection not found")
    return _connection_from_row(row, connections[DEFAULT_DB_ALIAS])


def _connection_from_row(row: tuple, database, *, epoch_micros: bool = False) -> Connection:
    """The token query's row as a Connection with its provider (the name only) loaded
    (`epoch_micros`: its timestamps as _read_columns gives them)."""
    attnames, conversions = _row_reader(database.vendor, epoch_micros)
    values = {}
    for name, value, steps in zip(attnames, row, conversions, strict=False):
        for step in steps:
            value = step(value)
        values[name] = value
    alias = database.alias
    connection = _loaded(Connection, alias, values)
    _PROVIDER_FIELD.set_cached_value(
        connection, _loaded(Provider, alias, {"id": values["provider_id"], "name": row[-1]})
    )
    return connection


def connection_list(
    *,
    workspace: str,
    environment: str | None = None,
    user_id: str | None = None,
    provider_name: str | None = None,
    status: str | None = None,
    tags: list[tuple[str, str]] | None = None,
) -> QuerySet[Connection]:
    queryset = Connection.objects.filter(workspace=workspace, environment=environment or wire.DEFAULT_ENVIRONMENT)
    queryset = queryset.select_related("provider").order_by("-created_at", "id")
    if user_id:
        queryset = queryset.filter(user_id=user_id)
    if provider_name:
        queryset = queryset.filter(provider__name__iexact=provider_name)
    if status:
        queryset = queryset.filter(status=status)
    for index, (key, value) in enumerate(tags or []):
        # KeyTextTransform, never `tags__<key>`: a key is data, not a lookup name.
        queryset = queryset.alias(**{f"_tag{index}": KeyTextTransform(key, "tags")}).filter(**{f"_tag{index}": value})
    return queryset
