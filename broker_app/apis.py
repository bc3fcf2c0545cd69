"""The broker's internal API, called by the gateway (and by operators with the broker key).

The gateway names the agent's workspace in X-Dromos-Workspace, the acting API key in
X-Dromos-Actor and the agent's address in X-Dromos-Client-IP; every lookup is scoped to
that workspace. The BrokerAccessMiddleware has already checked X-API-Key."""

from __future__ import annotations

import ipaddress

from django.core.paginator import EmptyPage, Paginator
from django.db import transaction
from rest_framework.response import Response
from rest_framework.views import APIView

from broker_app import selectors
from broker_app.audit import Actor, audit_record
from broker_app.presenters import connection_as_dict, provider_as_dict
from broker_app.services.connect import connection_start
from broker_app.services.device import device_start
from broker_app.services.lifecycle import connection_flag_attention
from broker_app.services.machine import machine_connection_create
from broker_app.services.providers import (
    Owner,
    provider_admin_as_dict,
    provider_delete,
    provider_owned_get,
    provider_upsert,
)
from broker_app.services.proxy import proxy_credential_read, proxy_token_refresh
from broker_app.services.reads import token_read
from broker_app.services.refresh import token_refresh
from broker_app.services.revocation import connection_revoke
from broker_app.services.static_credentials import static_connection_create, static_credentials_replace
from dromos import wire
from dromos.errors import InvalidRequest
from dromos.http import no_store
from dromos.renderers import JSONOnlyNegotiation


def _actor(request) -> Actor:
    ip = request.META.get("HTTP_X_DROMOS_CLIENT_IP") or request.META.get("REMOTE_ADDR")
    try:
        ipaddress.ip_address(ip or "")
    except ValueError:
        ip = None
    return Actor(
        name=request.META.get("HTTP_X_DROMOS_ACTOR", "broker-api")[:128],
        workspace=_workspace(request) or "",
        ip=ip,
        environment=_environment(request),
    )


def _workspace(request) -> str | None:
    return request.META.get("HTTP_X_DROMOS_WORKSPACE") or None


def _environment(request) -> str:
    """The agent key's environment (X-Dromos-Environment), or the default one; a malformed
    name is a 400 before any lookup."""
    raw = request.META.get("HTTP_X_DROMOS_ENVIRONMENT")
    if raw is None or raw == "":
        return wire.DEFAULT_ENVIRONMENT
    try:
        return wire.valid_environment(raw)
    except ValueError as exc:
        raise InvalidRequest(str(exc), details={"environment": [str(exc)]}) from None


def _required_workspace(request) -> str:
    workspace = _workspace(request)
    if not workspace:
        raise InvalidRequest("X-Dromos-Workspace header is required")
    return workspace


def _token_response(view) -> Response:
    return no_store(Response(view.as_dict()))


class ConnectionStartApi(APIView):
    def post(self, request):
        serializer = wire.RequestConnectionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data.get("flow") == wire.FLOW_DEVICE:
            started = device_start(
                workspace=_required_workspace(request),
                user_id=data["user_id"],
                provider_name=data["provider_name"],
                scopes=data.get("scopes"),
                params=data.get("params") or {},
                actor=_actor(request),
            )
            return no_store(Response(started.as_dict(), status=201))
        if data.get("flow") in wire.MACHINE_FLOWS:
            connection = machine_connection_create(
                workspace=_required_workspace(request),
                user_id=data["user_id"],
                provider_name=data["provider_name"],
                flow=data["flow"],
                scopes=data.get("scopes"),
                params=data.get("params") or {},
                grant={
                    name: data[name] for name in (*wire.GRANT_SECRET_FIELDS, *wire.GRANT_PARAM_FIELDS) if name in data
                },
                actor=_actor(request),
            )
            return no_store(Response(connection_as_dict(connection), status=201))
        result = connection_start(
            workspace=_required_workspace(request),
            user_id=data["user_id"],
            provider_name=data["provider_name"],
            scopes=data.get("scopes"),
            return_url=data["return_url"],
            params=data.get("params") or {},
            actor=_actor(request),
        )
        body = {
            "authUrl": result.auth_url,
            "state": result.state,
            "scopes": result.connection.scopes,
            "provider_id": str(result.connection.provider_id),
            "connection_id": result.connection.id,
        }
        return no_store(Response(body, status=201))

    def get(self, request):
        workspace = _required_workspace(request)
        query = wire.parse_query(wire.ConnectionListQuerySerializer, request.query_params)
        page_number = query.get("page", 1)
        page_size = query.get("page_size", wire.PAGE_SIZE_DEFAULT)
        queryset = selectors.connection_list(
            workspace=workspace,
            environment=_environment(request),
            user_id=query.get("user_id"),
            provider_name=query.get("provider_name"),
            status=query.get("status"),
            tags=wire.tag_pairs(query.get("tag", [])),
        )
        paginator = Paginator(queryset, page_size)
        try:
            page = paginator.page(page_number)
            results = [connection_as_dict(c) for c in page.object_list]
            has_next, has_previous = page.has_next(), page.has_previous()
        except EmptyPage:
            results, has_next, has_previous = [], False, page_number > 1
        return Response(
            {
                "count": paginator.count,
                "page": page_number,
                "page_size": page_size,
                "next_page": page_number + 1 if has_next else None,
                "previous_page": page_number - 1 if has_previous else None,
                "results": results,
            }
        )


class StaticConnectionApi(APIView):
    def post(self, request):
        serializer = wire.StaticConnectionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        connection = static_connection_create(
            workspace=_required_workspace(request),
            user_id=data["user_id"],
            provider_name=data["provider_name"],
            params=data.get("params") or {},
            credentials=data["credentials"],
            actor=_actor(request),
        )
        return no_store(Response(connection_as_dict(connection), status=201))


class CredentialsReplaceApi(APIView):
    def put(self, request, connection_id: str):
        serializer = wire.CredentialsReplaceInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        connection = static_credentials_replace(
            connection_id=connection_id,
            workspace=_required_workspace(request),
            credentials=serializer.validated_data["credentials"],
            actor=_actor(request),
        )
        return no_store(Response(connection_as_dict(connection)))


class ConnectionDetailApi(APIView):
    def get(self, request, connection_id: str):
        connection = selectors.connection_get(
            connection_id=connection_id, workspace=_required_workspace(request), environment=_environment(request)
        )
        return Response(connection_as_dict(connection))

    def delete(self, request, connection_id: str):
        connection = connection_revoke(
            connection_id=connection_id, workspace=_required_workspace(request), actor=_actor(request)
        )
        return Response(connection_as_dict(connection))


class TokenReadApi(APIView):
    content_negotiation_class = JSONOnlyNegotiation  # the hot path (issue 7)

    def get(self, request, connection_id: str):
        # The hot path: the gateway sends no query string unless the agent did (issue 7).
        query = wire.parse_query(wire.TokenQuerySerializer, request.query_params) if request.query_params else {}
        view = token_read(
            connection_id=connection_id,
            workspace=_required_workspace(request),
            actor=_actor(request),
            auto_refresh=query.get("auto_refresh", False),
            min_ttl=query.get("min_ttl", wire.MIN_TTL_DEFAULT),
        )
        return _token_response(view)


class TokenRefreshApi(APIView):
    """Gateway refresh proxy target, workspace-scoped."""

    def post(self, request, connection_id: str):
        view = token_refresh(connection_id=connection_id, workspace=_required_workspace(request), actor=_actor(request))
        return _token_response(view)


class BrokerRefreshApi(APIView):
    """`POST /connections/{id}/refresh` as the integration guide documents it: the broker
    key is an operator credential, so this route is not workspace-scoped."""

    def post(self, request, connection_id: str):
        view = token_refresh(connection_id=connection_id, workspace=_workspace(request), actor=_actor(request))
        return _token_response(view)


class ProviderListApi(APIView):
    def get(self, request):
        providers = selectors.provider_list(workspace=_workspace(request), environment=_environment(request))
        return Response({"providers": [provider_as_dict(p) for p in providers]})


# -- a workspace's own provider apps (issue 19) ------------------------------------------------


def _owner(request) -> Owner:
    return Owner.of(_required_workspace(request), _environment(request))


class WorkspaceProviderListApi(APIView):
    """The providers the workspace's environment uses, per name its own row or the shared
    one (`shared: true`, read-only). No secret, ever."""

    def get(self, request):
        owner = _owner(request)
        rows = selectors.provider_effective(workspace=owner.workspace, environment=owner.environment)
        return Response({"providers": [provider_admin_as_dict(p) for p in rows]})


class WorkspaceProviderDetailApi(APIView):
    def get(self, request, name: str):
        return Response(provider_admin_as_dict(provider_owned_get(owner=_owner(request), name=name)))

    @transaction.atomic  # the row and its audit row, or neither
    def put(self, request, name: str):
        if not isinstance(request.data, dict):
            raise InvalidRequest("a JSON object is required")
        fields = dict(request.data)
        secret = fields.pop("client_secret", None)
        provider, created = provider_upsert(owner=_owner(request), name=name, fields=fields, client_secret=secret)
        audit_record(
            connection_id=f"provider:{provider.name}",
            workspace=provider.workspace,
            actor=_actor(request),
            action="provider.created" if created else "provider.updated",
            detail={
                "provider": provider.name,
                "environment": provider.environment,
                "fields": sorted(fields),
                "secret_changed": secret is not None,
            },
        )
        return Response(provider_admin_as_dict(provider), status=201 if created else 200)

    @transaction.atomic
    def delete(self, request, name: str):
        owner = _owner(request)
        provider_delete(owner=owner, name=name)
        audit_record(
            connection_id=f"provider:{name.strip().lower()}"[:64],
            workspace=owner.workspace,
            actor=_actor(request),
            action="provider.deleted",
            detail={"provider": name.strip().lower(), "environment": owner.environment},
        )
        return Response(status=204)


# -- the gateway's API proxy (issue 15) ---------------------------------------------------------


def _version(request) -> int:
    raw = request.data.get("token_version") if isinstance(request.data, dict) else None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise InvalidRequest("token_version (a non-negative integer) is required")
    return raw


class ProxyCredentialApi(APIView):
    """The credential and API target the proxy injects: an audited token read."""

    content_negotiation_class = JSONOnlyNegotiation

    def get(self, request, connection_id: str):
        credential = proxy_credential_read(
            connection_id=connection_id, workspace=_required_workspace(request), actor=_actor(request)
        )
        return _token_response(credential)


class ProxyRefreshApi(APIView):
    """`{"token_version": V}`: refresh only if V is still the stored token's version."""

    def post(self, request, connection_id: str):
        credential = proxy_token_refresh(
            connection_id=connection_id,
            workspace=_required_workspace(request),
            actor=_actor(request),
            stale_version=_version(request),
        )
        return _token_response(credential)


class ProxyAttentionApi(APIView):
    """`{"token_version": V}`: the provider refused version V even after a refresh."""

    def post(self, request, connection_id: str):
        connection = connection_flag_attention(
            connection_id=connection_id,
            workspace=_required_workspace(request),
            actor=_actor(request),
            token_version=_version(request),
        )
        return Response(connection_as_dict(connection))
