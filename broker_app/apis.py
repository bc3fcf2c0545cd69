"""The broker's internal API, called by the gateway (and by operators with the broker key).

The gateway names the agent's workspace in X-Dromos-Workspace, the acting API key in
X-Dromos-Actor and the agent's address in X-Dromos-Client-IP; every lookup is scoped to
that workspace. The BrokerAccessMiddleware has already checked X-API-Key."""

from __future__ import annotations

import ipaddress

from django.core.paginator import EmptyPage, Paginator
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from broker_app import selectors
from broker_app.audit import Actor
from broker_app.models import Connection
from broker_app.presenters import connection_as_dict, provider_as_dict
from broker_app.services.connect import connection_start
from broker_app.services.proxy import connection_flag_attention, proxy_credential_read, proxy_token_refresh
from broker_app.services.tokens import connection_revoke, token_read, token_refresh
from dromos.errors import InvalidRequest
from dromos.renderers import JSONOnlyNegotiation
from dromos.validators import validate_scope_token


def _actor(request) -> Actor:
    ip = request.META.get("HTTP_X_DROMOS_CLIENT_IP") or request.META.get("REMOTE_ADDR")
    try:
        ipaddress.ip_address(ip or "")
    except ValueError:
        ip = None
    return Actor(
        name=request.META.get("HTTP_X_DROMOS_ACTOR", "broker-api")[:128], workspace=_workspace(request) or "", ip=ip
    )


def _workspace(request) -> str | None:
    return request.META.get("HTTP_X_DROMOS_WORKSPACE") or None


def _required_workspace(request) -> str:
    workspace = _workspace(request)
    if not workspace:
        raise InvalidRequest("X-Dromos-Workspace header is required")
    return workspace


def _token_response(view) -> Response:
    response = Response(view.as_dict())
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


class ConnectionStartApi(APIView):
    class InputSerializer(serializers.Serializer):
        user_id = serializers.CharField(max_length=255)
        provider_name = serializers.CharField(max_length=64)
        scopes = serializers.ListField(
            child=serializers.CharField(max_length=256, validators=[validate_scope_token]),
            required=False,
            allow_empty=True,
            max_length=100,
        )
        return_url = serializers.CharField(max_length=2048, trim_whitespace=False)
        params = serializers.DictField(child=serializers.CharField(max_length=256), required=False, allow_empty=True)

    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
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
        response = Response(body, status=201)
        response["Cache-Control"] = "no-store"
        return response

    def get(self, request):
        workspace = _required_workspace(request)
        status = request.query_params.get("status") or None
        if status and status not in Connection.Status.values:
            raise InvalidRequest(f"status must be one of {', '.join(Connection.Status.values)}")
        try:
            page_number = int(request.query_params.get("page", "1"))
            page_size = min(200, max(1, int(request.query_params.get("page_size", "50"))))
        except ValueError:
            raise InvalidRequest("page and page_size must be integers") from None
        if page_number < 1:
            raise InvalidRequest("page must be 1 or more")
        user_id = request.query_params.get("user_id") or None
        provider_name = request.query_params.get("provider_name") or None
        if "\x00" in (user_id or "") + (provider_name or ""):  # PostgreSQL text cannot hold NUL
            raise InvalidRequest("user_id and provider_name must not contain NUL characters")
        queryset = selectors.connection_list(
            workspace=workspace,
            user_id=user_id,
            provider_name=provider_name,
            status=status,
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


class ConnectionDetailApi(APIView):
    def get(self, request, connection_id: str):
        connection = selectors.connection_get(connection_id=connection_id, workspace=_required_workspace(request))
        return Response(connection_as_dict(connection))

    def delete(self, request, connection_id: str):
        connection = connection_revoke(
            connection_id=connection_id, workspace=_required_workspace(request), actor=_actor(request)
        )
        return Response(connection_as_dict(connection))


class TokenReadApi(APIView):
    content_negotiation_class = JSONOnlyNegotiation  # the hot path (issue 7)

    def get(self, request, connection_id: str):
        auto_refresh = request.query_params.get("auto_refresh", "false").lower()
        if auto_refresh not in ("true", "false", "1", "0"):
            raise InvalidRequest("auto_refresh must be true or false")
        try:
            min_ttl = int(request.query_params.get("min_ttl", "60"))
        except ValueError:
            raise InvalidRequest("min_ttl must be an integer number of seconds") from None
        if not 0 <= min_ttl <= 86400:
            raise InvalidRequest("min_ttl must be between 0 and 86400")
        view = token_read(
            connection_id=connection_id,
            workspace=_required_workspace(request),
            actor=_actor(request),
            auto_refresh=auto_refresh in ("true", "1"),
            min_ttl=min_ttl,
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
        return Response({"providers": [provider_as_dict(p) for p in selectors.provider_list()]})


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
