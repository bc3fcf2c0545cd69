"""Connect sessions and reconnect in place (issue 16), forwarded to the broker. Inputs and
bodies: dromos/wire.py."""

from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema

from dromos import wire
from dromos.errors import InvalidRequest
from gateway_app import restrictions
from gateway_app.apis import (
    CONNECTION_ID_PARAMETER,
    ERRORS,
    GatewayApi,
    check_connection_id,
    relay_answer,
    request_client_ip,
)
from gateway_app.broker_client import broker

SESSION_ID = r"cs_[A-Za-z0-9_-]{1,61}"
SESSION_ID_PARAMETER = OpenApiParameter(
    "session_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    pattern=f"^{SESSION_ID}$",
    description="From connect-sessions",
)


class ConnectSessionCreateApi(GatewayApi):
    required_scope = "connections:write"
    restrict = staticmethod(restrictions.restrict_session)

    @extend_schema(
        operation_id="create_connect_session",
        request=wire.ConnectSessionInputSerializer,
        responses={
            201: wire.ConnectSessionCreatedSerializer,
            **{k: v for k, v in ERRORS.items() if k in (400, 401, 403, 404, 409, 429, 502, 503)},
        },
    )
    def post(self, request):
        serializer = wire.ConnectSessionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            wire.internal_path(wire.CONNECT_SESSIONS),
            principal=request.user,
            client_ip=request_client_ip(request),
            json=serializer.validated_data,
        )
        return relay_answer(answer, cacheable=False)


class ConnectSessionDetailApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="get_connect_session",
        parameters=[SESSION_ID_PARAMETER],
        responses={200: wire.ConnectSessionSerializer, **ERRORS},
    )
    def get(self, request, session_id: str):
        if not re.fullmatch(SESSION_ID, session_id):
            raise InvalidRequest("session_id is malformed")
        answer = broker().call(
            "GET",
            wire.internal_path(wire.CONNECT_SESSION, session_id=session_id),
            principal=request.user,
            client_ip=request_client_ip(request),
        )
        if request.user.narrow and answer.status == 200:
            restrictions.check_session(request.user, answer.body)  # a read: checked on the answer
        return relay_answer(answer)


class ReconnectApi(GatewayApi):
    required_scope = "connections:write"

    @extend_schema(
        operation_id="reconnect_connection",
        request=wire.ReconnectInputSerializer,
        parameters=[CONNECTION_ID_PARAMETER],
        responses={201: wire.ReconnectRequestSerializer, **ERRORS},
    )
    def post(self, request, connection_id: str):
        check_connection_id(connection_id)
        serializer = wire.ReconnectInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            wire.internal_path(wire.CONNECTION_RECONNECT, connection_id),
            principal=request.user,
            client_ip=request_client_ip(request),
            json=serializer.validated_data,
        )
        return relay_answer(answer, cacheable=False)
