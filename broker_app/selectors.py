"""Reads. Every lookup on behalf of an agent is scoped to its workspace: another
workspace's connection id is indistinguishable from an unknown one."""

from __future__ import annotations

from django.db.models import QuerySet

from broker_app.models import Connection, Provider
from dromos.errors import InvalidRequest, NotFound


def provider_get_by_name(name: object) -> Provider:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("provider_name is required", details={"provider_name": ["required"]})
    provider = Provider.objects.filter(name__iexact=name.strip(), enabled=True).first()
    if provider is None:
        known = provider_names()
        raise InvalidRequest(
            f"unknown provider {name.strip()[:64]!r}; known providers: {', '.join(known) or 'none configured'}",
            details={"provider_name": ["unknown provider"]},
            known_providers=known,
        )
    return provider


def provider_names() -> list[str]:
    return list(Provider.objects.filter(enabled=True).order_by("name").values_list("name", flat=True))


def provider_list() -> QuerySet[Provider]:
    return Provider.objects.filter(enabled=True).order_by("name")


def connection_get(*, connection_id: str, workspace: str | None) -> Connection:
    queryset = Connection.objects.select_related("provider")
    if workspace is not None:
        queryset = queryset.filter(workspace=workspace)
    connection = queryset.filter(pk=connection_id).first()
    if connection is None:
        raise NotFound("connection not found")
    return connection


_TOKEN_FIELDS = ("id", "workspace", "status", "access_token_enc", "id_token_enc", "token_type",
                 "expires_at", "scopes", "granted_scopes", "error", "refresh_token_enc",
                 "provider__name")


def connection_for_token(*, connection_id: str, workspace: str | None) -> Connection:
    """Only the columns the token path needs, in one query."""
    queryset = Connection.objects.select_related("provider").only(*_TOKEN_FIELDS)
    if workspace is not None:
        queryset = queryset.filter(workspace=workspace)
    connection = queryset.filter(pk=connection_id).first()
    if connection is None:
        raise NotFound("connection not found")
    return connection


def connection_list(*, workspace: str, user_id: str | None = None, provider_name: str | None = None,
                    status: str | None = None) -> QuerySet[Connection]:
    queryset = Connection.objects.filter(workspace=workspace).select_related("provider").order_by("-created_at", "id")
    if user_id:
        queryset = queryset.filter(user_id=user_id)
    if provider_name:
        queryset = queryset.filter(provider__name__iexact=provider_name)
    if status:
        queryset = queryset.filter(status=status)
    return queryset
