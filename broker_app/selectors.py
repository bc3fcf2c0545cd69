"""Reads. Every lookup on behalf of an agent is scoped to its workspace: another
workspace's connection id is indistinguishable from an unknown one."""

from __future__ import annotations

from functools import lru_cache

from django.db import connection as db_connection
from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTextTransform

from broker_app.models import Connection, Provider
from dromos import wire
from dromos.db import execute_fixed
from dromos.errors import InvalidRequest, NotFound


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
    the default one); `workspace` None: any (an operator's call)."""
    queryset = Connection.objects.select_related("provider")
    if workspace is not None:
        queryset = queryset.filter(workspace=workspace, environment=environment or wire.DEFAULT_ENVIRONMENT)
    connection = queryset.filter(pk=connection_id).first()
    if connection is None:
        raise NotFound("connection not found")
    return connection


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
    # Identifiers come from the models (quoted), values are always parameters.
    sql = " ".join(
        (
            f"SELECT {columns}, p.{quote(provider_meta.get_field('name').column)}",
            f"FROM {quote(meta.db_table)} c INNER JOIN {quote(provider_meta.db_table)} p",
            f"ON p.{quote(provider_meta.pk.column)} = c.{quote(meta.get_field('provider').column)}",
            f"WHERE c.{quote(meta.pk.column)} = %s",
        )
    )
    if scoped:
        sql += f" AND c.{quote(meta.get_field('workspace').column)} = %s"
        sql += f" AND c.{quote(meta.get_field('environment').column)} = %s"
    return sql, fields


def _backend_converters(fields: tuple) -> list[tuple]:
    """(column, the database backend's converters) per field, as the ORM would apply them: on
    SQLite a datetime column comes back naive (or as text) without them."""
    if db_connection.vendor == "postgresql":  # psycopg returns Python values already: the hot path stays as is
        return [(None, ())] * len(fields)
    table = Connection._meta.db_table
    return [(column, db_connection.ops.get_db_converters(column)) for column in (f.get_col(table) for f in fields)]


def connection_for_token(*, connection_id: str, workspace: str | None, environment: str | None = None) -> Connection:
    """Only the columns the token path needs (the provider's name included), in one query.
    The other columns are deferred: reading one loads it. Scoped as connection_get."""
    sql, fields = _token_query(workspace is not None)
    params = (
        [connection_id] if workspace is None else [connection_id, workspace, environment or wire.DEFAULT_ENVIRONMENT]
    )
    row = execute_fixed(sql, params, fetch=True)
    if row is None:
        raise NotFound("connection not found")
    values = []
    for field, value, (column, converters) in zip(fields, row, _backend_converters(fields), strict=False):
        for convert in converters:  # SQLite: text to aware datetimes etc.; none on PostgreSQL
            value = convert(value, column, db_connection)
        values.append(field.from_db_value(value, None, db_connection) if hasattr(field, "from_db_value") else value)
    connection = Connection.from_db(db_connection.alias, [field.attname for field in fields], values)
    connection.provider = Provider.from_db(db_connection.alias, ["id", "name"], [connection.provider_id, row[-1]])
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
