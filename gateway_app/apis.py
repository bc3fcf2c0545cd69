"""The public /v1 API. Thin: authenticate, validate, forward to the broker, answer.

Broker answers pass through byte for byte (they already have the contract's shape), so
the gateway never re-serialises a token."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from dromos.errors import InvalidRequest
from dromos.renderers import JSONOnlyNegotiation
from dromos.validators import validate_scope_token
from gateway_app import schema as _schema  # noqa: F401  (registers the API-key security scheme)
from gateway_app.authentication import ApiKeyAuthentication, ApiKeyThrottle, HasScope
from gateway_app.broker_client import BrokerAnswer, broker
from gateway_app.proxy import credential_forget

CONNECTION_ID = r"[A-Za-z0-9_-]{1,64}"
CONNECTION_STATUSES = ["pending", "active", "failed", "revoked"]
CONNECTION_ID_PARAMETER = OpenApiParameter(
    "connection_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    pattern=f"^{CONNECTION_ID}$",
    description="The id returned by request-connection (anything else is answered 400)",
)


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    message = serializers.CharField()


class TokenSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    token_type = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    id_token = serializers.CharField(required=False)
    scopes = serializers.ListField(child=serializers.CharField())
    provider_name = serializers.CharField()
    connection_id = serializers.CharField()


class ConnectionSerializer(serializers.Serializer):
    connection_id = serializers.CharField()
    status = serializers.ChoiceField(choices=CONNECTION_STATUSES)
    provider_name = serializers.CharField()
    provider_id = serializers.CharField()
    user_id = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    granted_scopes = serializers.ListField(child=serializers.CharField())
    scopes_narrowed = serializers.BooleanField()
    missing_scopes = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="refresh_token_expires_soon, refresh_token_expired, no_refresh_token, scopes_narrowed",
    )
    error = serializers.CharField(allow_null=True)
    error_description = serializers.CharField(allow_null=True)
    account = serializers.DictField()
    metadata = serializers.DictField()
    expires_at = serializers.DateTimeField(allow_null=True)
    refresh_token_expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    activated_at = serializers.DateTimeField(allow_null=True)
    last_refreshed_at = serializers.DateTimeField(allow_null=True)


class ParamFormatSerializer(serializers.Serializer):
    pattern = serializers.CharField()
    example = serializers.CharField()
    required = serializers.BooleanField()


class ProviderSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField()
    provider_id = serializers.CharField()
    template = serializers.CharField()
    default_scopes = serializers.ListField(child=serializers.CharField())
    supports_refresh = serializers.BooleanField()
    supports_pkce = serializers.BooleanField()
    oidc = serializers.BooleanField()
    docs_url = serializers.CharField(allow_blank=True)
    params = serializers.ListField(child=serializers.CharField())
    scopes_url = serializers.CharField(allow_blank=True)
    supports_revocation = serializers.BooleanField(allow_null=True)
    refresh_token_rotation = serializers.BooleanField()
    refresh_token_lifetime_days = serializers.IntegerField(allow_null=True)
    api_base_url = serializers.CharField(allow_blank=True, help_text="Where /v1/proxy sends calls; empty: no proxy")
    param_formats = serializers.DictField(child=ParamFormatSerializer())


class TokenQuerySerializer(serializers.Serializer):
    auto_refresh = serializers.BooleanField(
        required=False, help_text="Refresh first when the token expires within min_ttl seconds"
    )
    min_ttl = serializers.IntegerField(required=False, min_value=0, max_value=86400, help_text="Seconds (default 60)")


class ConnectionListQuerySerializer(serializers.Serializer):
    user_id = serializers.CharField(required=False, allow_blank=True, max_length=255)
    provider_name = serializers.CharField(required=False, allow_blank=True, max_length=64)
    status = serializers.ChoiceField(choices=CONNECTION_STATUSES, required=False, allow_blank=True)
    page = serializers.IntegerField(required=False, min_value=1, help_text="Default 1")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=200, help_text="Default 50")


def _query(serializer_class: type[serializers.Serializer], request) -> dict[str, str]:
    """Validated query parameters as the broker reads them (blank ones dropped): bad values
    are answered 400 here, before any broker call."""
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    params = {}
    for name, value in serializer.validated_data.items():
        if name not in request.query_params or value in ("", None):
            continue
        params[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return params


ERRORS = {
    code: OpenApiResponse(ErrorSerializer, description=text)
    for code, text in (
        (400, "Bad input"),
        (401, "No or bad API key"),
        (403, "Key lacks the scope"),
        (404, "Unknown or not yours"),
        (409, "Connection not active"),
        (429, "Throttled (Retry-After)"),
        (502, "Provider or broker answered badly"),
        (503, "Broker or provider unavailable (Retry-After)"),
    )
}


def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


def _relay(answer: BrokerAnswer, *, no_store: bool = False) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status, content_type="application/json")
    if answer.retry_after:
        response["Retry-After"] = answer.retry_after
    if no_store:
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
    return response


def _check_id(connection_id: str) -> None:
    import re

    if not re.fullmatch(CONNECTION_ID, connection_id):
        raise InvalidRequest("connection_id is malformed")


class GatewayApi(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasScope]
    throttle_classes = [ApiKeyThrottle]
    required_scope: str | None = None


class PingApi(APIView):
    """`GET /v1/ping`: the gateway's own answer, with no key, no throttle, no database and no
    broker. The benchmark's floor: what the stack costs to answer anything at all."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []
    content_negotiation_class = JSONOnlyNegotiation  # as the token path's views, or the floor would be higher

    @extend_schema(operation_id="ping", responses={200: inline_serializer("Pong", {"status": serializers.CharField()})})
    def get(self, request):
        return Response({"status": "ok"})


class RequestConnectionApi(GatewayApi):
    required_scope = "connections:write"

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
        params = serializers.DictField(child=serializers.CharField(max_length=256), required=False)

    @extend_schema(
        operation_id="request_connection",
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "ConnectionRequest",
                {
                    "authUrl": serializers.URLField(),
                    "state": serializers.CharField(),
                    "scopes": serializers.ListField(child=serializers.CharField()),
                    "provider_id": serializers.CharField(),
                    "connection_id": serializers.CharField(),
                },
            ),
            **{k: v for k, v in ERRORS.items() if k in (400, 401, 403, 429, 502, 503)},
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            "/internal/v1/connections",
            principal=request.user,
            client_ip=_client_ip(request),
            json=serializer.validated_data,
        )
        return _relay(answer, no_store=True)


class CheckConnectionApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="check_connection",
        parameters=[CONNECTION_ID_PARAMETER],
        responses={200: ConnectionSerializer, **ERRORS},
    )
    def get(self, request, connection_id: str):
        _check_id(connection_id)
        return _relay(
            broker().call(
                "GET",
                f"/internal/v1/connections/{connection_id}",
                principal=request.user,
                client_ip=_client_ip(request),
            )
        )


class TokenApi(GatewayApi):
    required_scope = "tokens:read"
    content_negotiation_class = JSONOnlyNegotiation  # the hot path (issue 7)

    @extend_schema(
        operation_id="get_token",
        parameters=[CONNECTION_ID_PARAMETER, TokenQuerySerializer],
        responses={200: TokenSerializer, **ERRORS},
    )
    def get(self, request, connection_id: str):
        _check_id(connection_id)
        # The hot path: most calls carry no query string, and validating none costs CPU (issue 7).
        params = _query(TokenQuerySerializer, request) if request.query_params else {}
        return _relay(
            broker().call(
                "GET",
                f"/internal/v1/connections/{connection_id}/token",
                principal=request.user,
                client_ip=_client_ip(request),
                params=params,
            ),
            no_store=True,
        )


class RefreshApi(GatewayApi):
    required_scope = "tokens:refresh"

    @extend_schema(
        operation_id="refresh_token",
        request=None,
        parameters=[CONNECTION_ID_PARAMETER],
        responses={200: TokenSerializer, **ERRORS},
    )
    def post(self, request, connection_id: str):
        _check_id(connection_id)
        return _relay(
            broker().call(
                "POST",
                f"/internal/v1/connections/{connection_id}/refresh",
                principal=request.user,
                client_ip=_client_ip(request),
            ),
            no_store=True,
        )


class ConnectionListApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="list_connections",
        parameters=[ConnectionListQuerySerializer],
        responses={
            200: inline_serializer(
                "ConnectionPage",
                {
                    "count": serializers.IntegerField(),
                    "page": serializers.IntegerField(),
                    "page_size": serializers.IntegerField(),
                    "next": serializers.URLField(allow_null=True),
                    "previous": serializers.URLField(allow_null=True),
                    "results": ConnectionSerializer(many=True),
                },
            ),
            **ERRORS,
        },
    )
    def get(self, request):
        params = _query(ConnectionListQuerySerializer, request)
        answer = broker().call(
            "GET", "/internal/v1/connections", principal=request.user, client_ip=_client_ip(request), params=params
        )
        if answer.status != 200:
            return _relay(answer)
        body = orjson.loads(answer.body)
        # The broker knows page numbers; links are the gateway's own URLs.
        for link, page in (("next", body.pop("next_page", None)), ("previous", body.pop("previous_page", None))):
            body[link] = (
                None
                if page is None
                else request.build_absolute_uri(f"{request.path}?{urlencode({**params, 'page': page})}")
            )
        return HttpResponse(orjson.dumps(body), content_type="application/json")


class ConnectionDeleteApi(GatewayApi):
    required_scope = "connections:delete"

    @extend_schema(
        operation_id="delete_connection",
        parameters=[CONNECTION_ID_PARAMETER],
        responses={200: ConnectionSerializer, **ERRORS},
    )
    def delete(self, request, connection_id: str):
        _check_id(connection_id)
        credential_forget(request.user.workspace, connection_id)  # the proxy's cached credential
        return _relay(
            broker().call(
                "DELETE",
                f"/internal/v1/connections/{connection_id}",
                principal=request.user,
                client_ip=_client_ip(request),
            )
        )


class ProviderListApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="list_providers",
        responses={
            200: inline_serializer(
                "ProviderList",
                {
                    "providers": ProviderSerializer(many=True),
                },
            ),
            **ERRORS,
        },
    )
    def get(self, request):
        return _relay(
            broker().call("GET", "/internal/v1/providers", principal=request.user, client_ip=_client_ip(request))
        )
