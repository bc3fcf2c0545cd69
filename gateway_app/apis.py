"""The public /v1 API. Thin: authenticate, validate, forward to the broker, answer.

Broker answers pass through byte for byte (they already have the contract's shape), so
the gateway never re-serialises a token."""

from __future__ import annotations

from contextlib import nullcontext
from urllib.parse import urlencode

import orjson
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from dromos import wire
from dromos.errors import InvalidRequest
from dromos.http import no_store
from dromos.renderers import JSONOnlyNegotiation
from gateway_app import restrictions
from gateway_app import schema as _schema  # noqa: F401  (registers the API-key security scheme)
from gateway_app.authentication import ApiKeyAuthentication, ApiKeyThrottle, HasScope
from gateway_app.broker_client import BrokerAnswer, broker
from gateway_app.bulkhead import slow_call_slot
from gateway_app.proxy import credential_forget

CONNECTION_ID = r"[A-Za-z0-9_-]{1,64}"
CONNECTION_ID_PARAMETER = OpenApiParameter(
    "connection_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    pattern=f"^{CONNECTION_ID}$",
    description="The id returned by request-connection (anything else is answered 400)",
)


def _query(serializer_class: type[serializers.Serializer], request) -> dict[str, str | list[str]]:
    """Validated query parameters as the broker reads them (blank ones dropped): bad values
    are answered 400 here, before any broker call. A repeatable one (tag=…&tag=…) stays a list."""
    return {
        name: value
        if isinstance(value, list)
        else ("true" if value else "false")
        if isinstance(value, bool)
        else str(value)
        for name, value in wire.parse_query(serializer_class, request.query_params).items()
    }


ERRORS = {
    code: OpenApiResponse(wire.ErrorSerializer, description=text)
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


def request_client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


def relay_answer(answer: BrokerAnswer, *, cacheable: bool = True) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status, content_type="application/json")
    if answer.retry_after:
        response["Retry-After"] = answer.retry_after
    return response if cacheable else no_store(response)


def check_connection_id(connection_id: str) -> None:
    import re

    if not re.fullmatch(CONNECTION_ID, connection_id):
        raise InvalidRequest("connection_id is malformed")


class GatewayApi(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasScope]
    throttle_classes = [ApiKeyThrottle]
    required_scope: str | None = None
    # Narrow keys (issue 19): the view's own check of what the request names (None: only
    # the address and a connection_id in the path are checked).
    restrict = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        principal = request.user
        if principal.networks is not None or principal.narrow:  # an unrestricted key pays these two reads
            restrictions.enforce(request, self)  # a few comparisons; before any broker call


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
    restrict = staticmethod(restrictions.restrict_body)

    @extend_schema(
        operation_id="request_connection",
        request=wire.RequestConnectionInputSerializer,
        responses={
            201: PolymorphicProxySerializer(
                component_name="ConnectionRequestOrDevice",
                serializers=[
                    wire.ConnectionRequestSerializer,
                    wire.DeviceConnectionRequestSerializer,
                    wire.ConnectionSerializer,  # the machine flows: the connection, active or failed
                ],
                resource_type_field_name=None,
            ),
            **{k: v for k, v in ERRORS.items() if k in (400, 401, 403, 429, 502, 503)},
        },
    )
    def post(self, request):
        serializer = wire.RequestConnectionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            wire.internal_path(wire.CONNECTIONS),
            principal=request.user,
            client_ip=request_client_ip(request),
            json=serializer.validated_data,
        )
        return relay_answer(answer, cacheable=False)


class CheckConnectionApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="check_connection",
        parameters=[CONNECTION_ID_PARAMETER],
        responses={200: wire.ConnectionSerializer, **ERRORS},
    )
    def get(self, request, connection_id: str):
        check_connection_id(connection_id)
        return relay_answer(
            broker().call(
                "GET",
                wire.internal_path(wire.CONNECTION, connection_id),
                principal=request.user,
                client_ip=request_client_ip(request),
            )
        )


class TokenApi(GatewayApi):
    required_scope = "tokens:read"
    content_negotiation_class = JSONOnlyNegotiation  # the hot path (issue 7)

    @extend_schema(
        operation_id="get_token",
        parameters=[CONNECTION_ID_PARAMETER, wire.TokenQuerySerializer],
        responses={200: wire.TokenSerializer, **ERRORS},
    )
    def get(self, request, connection_id: str):
        check_connection_id(connection_id)
        # The hot path: most calls carry no query string, and validating none costs CPU (issue 7).
        params = _query(wire.TokenQuerySerializer, request) if request.query_params else {}
        with slow_call_slot(request.user) if params.get("auto_refresh") in ("true", "1") else nullcontext():
            answer = broker().call(
                "GET",
                wire.internal_path(wire.CONNECTION_TOKEN, connection_id),
                principal=request.user,
                client_ip=request_client_ip(request),
                params=params,
            )
        return relay_answer(answer, cacheable=False)


class RefreshApi(GatewayApi):
    required_scope = "tokens:refresh"

    @extend_schema(
        operation_id="refresh_token",
        request=None,
        parameters=[CONNECTION_ID_PARAMETER],
        responses={200: wire.TokenSerializer, **ERRORS},
    )
    def post(self, request, connection_id: str):
        check_connection_id(connection_id)
        with slow_call_slot(request.user):
            answer = broker().call(
                "POST",
                wire.internal_path(wire.CONNECTION_REFRESH, connection_id),
                principal=request.user,
                client_ip=request_client_ip(request),
            )
        return relay_answer(answer, cacheable=False)


class ConnectionListApi(GatewayApi):
    restrict = staticmethod(restrictions.restrict_listing)

    @property
    def required_scope(self) -> str:
        return "connections:write" if self.request.method == "POST" else "connections:read"

    @extend_schema(
        operation_id="create_static_connection",
        request=wire.StaticConnectionInputSerializer,
        responses={201: wire.ConnectionSerializer, **ERRORS},
    )
    def post(self, request):
        serializer = wire.StaticConnectionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            wire.internal_path(wire.STATIC_CONNECTIONS),
            principal=request.user,
            client_ip=request_client_ip(request),
            json=serializer.validated_data,
        )
        return relay_answer(answer, cacheable=False)

    @extend_schema(
        operation_id="list_connections",
        parameters=[wire.ConnectionListQuerySerializer],
        responses={
            200: wire.ConnectionPageSerializer,
            **ERRORS,
        },
    )
    def get(self, request):
        params = _query(wire.ConnectionListQuerySerializer, request)
        answer = broker().call(
            "GET",
            wire.internal_path(wire.CONNECTIONS),
            principal=request.user,
            client_ip=request_client_ip(request),
            params=params,
        )
        if answer.status != 200:
            return relay_answer(answer)
        body = orjson.loads(answer.body)
        # The broker knows page numbers; links are the gateway's own URLs.
        for number, link in wire.PAGE_LINKS.items():
            page = body.pop(number, None)
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
        responses={200: wire.ConnectionSerializer, **ERRORS},
    )
    def delete(self, request, connection_id: str):
        check_connection_id(connection_id)
        credential_forget(request.user.tenant, connection_id)  # the proxy's cached credential
        return relay_answer(
            broker().call(
                "DELETE",
                wire.internal_path(wire.CONNECTION, connection_id),
                principal=request.user,
                client_ip=request_client_ip(request),
            )
        )


class CredentialsReplaceApi(GatewayApi):
    required_scope = "connections:write"

    @extend_schema(
        operation_id="replace_credentials",
        parameters=[CONNECTION_ID_PARAMETER],
        request=wire.CredentialsReplaceInputSerializer,
        responses={200: wire.ConnectionSerializer, **ERRORS},
    )
    def put(self, request, connection_id: str):
        check_connection_id(connection_id)
        serializer = wire.CredentialsReplaceInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        credential_forget(request.user.tenant, connection_id)  # the proxy's cached credential
        answer = broker().call(
            "PUT",
            wire.internal_path(wire.CONNECTION_CREDENTIALS, connection_id),
            principal=request.user,
            client_ip=request_client_ip(request),
            json=serializer.validated_data,
        )
        return relay_answer(answer, cacheable=False)


class ProviderListApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="list_providers",
        responses={
            200: wire.ProviderListSerializer,
            **ERRORS,
        },
    )
    def get(self, request):
        return relay_answer(
            broker().call(
                "GET", wire.internal_path(wire.PROVIDERS), principal=request.user, client_ip=request_client_ip(request)
            )
        )
