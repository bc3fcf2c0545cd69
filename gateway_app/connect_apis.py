"""Connect sessions and reconnect in place (issue 16), forwarded to the broker."""

from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers

from dromos.errors import InvalidRequest
from dromos.tags import MAX_TAGS, TagError, validate_tags
from dromos.validators import validate_scope_token
from gateway_app.apis import (
    CONNECTION_ID_PARAMETER,
    ERRORS,
    ConnectionSerializer,
    GatewayApi,
    _check_id,
    _client_ip,
    _relay,
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


def _scopes() -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=256, validators=[validate_scope_token]), max_length=100
    )


class ConnectSessionCreateApi(GatewayApi):
    required_scope = "connections:write"

    class InputSerializer(serializers.Serializer):
        user_id = serializers.CharField(max_length=255, required=False, help_text="Required unless reconnect is set")
        allowed_providers = serializers.ListField(
            child=serializers.CharField(max_length=64),
            required=False,
            allow_empty=True,
            max_length=50,
            help_text="Provider names the page offers (default: every configured provider)",
        )
        scopes = serializers.DictField(child=_scopes(), required=False, help_text="provider name -> scopes")
        return_url = serializers.CharField(max_length=2048, trim_whitespace=False)
        tags = serializers.DictField(
            child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=256),
            required=False,
            help_text=f"Copied onto the connection; at most {MAX_TAGS}, keys [A-Za-z0-9_.-]{{1,64}}, values <= 256",
        )
        expires_in = serializers.IntegerField(
            required=False, min_value=60, max_value=86400, help_text="Seconds the link lives (default 1800)"
        )
        reconnect = serializers.RegexField(
            r"^[A-Za-z0-9_-]{1,64}$", required=False, help_text="A connection id: the page reconnects it in place"
        )

        def validate_tags(self, value):
            try:
                return validate_tags(value)
            except TagError as exc:
                raise serializers.ValidationError(str(exc)) from None

    @extend_schema(
        operation_id="create_connect_session",
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "ConnectSessionCreated",
                {
                    "connect_url": serializers.URLField(),
                    "session_id": serializers.CharField(),
                    "expires_at": serializers.DateTimeField(),
                },
            ),
            **{k: v for k, v in ERRORS.items() if k in (400, 401, 403, 404, 409, 429, 502, 503)},
        },
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            "/internal/v1/connect-sessions",
            principal=request.user,
            client_ip=_client_ip(request),
            json=serializer.validated_data,
        )
        return _relay(answer, no_store=True)


class ConnectSessionDetailApi(GatewayApi):
    required_scope = "connections:read"

    @extend_schema(
        operation_id="get_connect_session",
        parameters=[SESSION_ID_PARAMETER],
        responses={
            200: inline_serializer(
                "ConnectSession",
                {
                    "session_id": serializers.CharField(),
                    "status": serializers.ChoiceField(choices=["pending", "started", "completed", "failed", "expired"]),
                    "user_id": serializers.CharField(),
                    "allowed_providers": serializers.ListField(child=serializers.CharField()),
                    "scopes": serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
                    "return_url": serializers.CharField(),
                    "tags": serializers.DictField(child=serializers.CharField()),
                    "reconnect": serializers.CharField(allow_null=True),
                    "error": serializers.CharField(allow_null=True),
                    "expires_at": serializers.DateTimeField(),
                    "created_at": serializers.DateTimeField(),
                    "used_at": serializers.DateTimeField(allow_null=True),
                    "completed_at": serializers.DateTimeField(allow_null=True),
                    "connections": ConnectionSerializer(many=True),
                },
            ),
            **ERRORS,
        },
    )
    def get(self, request, session_id: str):
        if not re.fullmatch(SESSION_ID, session_id):
            raise InvalidRequest("session_id is malformed")
        return _relay(
            broker().call(
                "GET",
                f"/internal/v1/connect-sessions/{session_id}",
                principal=request.user,
                client_ip=_client_ip(request),
            )
        )


class ReconnectApi(GatewayApi):
    required_scope = "connections:write"

    class InputSerializer(serializers.Serializer):
        scopes = serializers.ListField(
            child=serializers.CharField(max_length=256, validators=[validate_scope_token]),
            required=False,
            allow_empty=True,
            max_length=100,
            help_text="Added to the connection's scopes (incremental consent)",
        )
        return_url = serializers.CharField(
            max_length=2048, trim_whitespace=False, required=False, help_text="Default: the connection's"
        )

    @extend_schema(
        operation_id="reconnect_connection",
        request=InputSerializer,
        parameters=[CONNECTION_ID_PARAMETER],
        responses={
            201: inline_serializer(
                "ReconnectRequest",
                {
                    "authUrl": serializers.URLField(),
                    "connection_id": serializers.CharField(),
                    "scopes": serializers.ListField(child=serializers.CharField()),
                },
            ),
            **ERRORS,
        },
    )
    def post(self, request, connection_id: str):
        _check_id(connection_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        answer = broker().call(
            "POST",
            f"/internal/v1/connections/{connection_id}/reconnect",
            principal=request.user,
            client_ip=_client_ip(request),
            json=serializer.validated_data,
        )
        return _relay(answer, no_store=True)
