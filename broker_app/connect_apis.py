"""Internal API for connect sessions and reconnect in place (issue 16), called by the gateway
with the workspace in X-Dromos-Workspace (see broker_app/apis.py)."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from broker_app.apis import _actor as request_actor
from broker_app.apis import _required_workspace as request_workspace
from broker_app.services.connect_sessions import (
    DEFAULT_EXPIRES_IN,
    MAX_EXPIRES_IN,
    MIN_EXPIRES_IN,
    connect_session_as_dict,
    connect_session_create,
    connect_session_get,
)
from broker_app.services.reconnect import connection_reconnect
from dromos.validators import validate_scope_token

ScopeList = serializers.ListField(
    child=serializers.CharField(max_length=256, validators=[validate_scope_token]), max_length=100
)


def _no_store(response: Response) -> Response:
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


class ConnectSessionCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        user_id = serializers.CharField(max_length=255, required=False)
        allowed_providers = serializers.ListField(
            child=serializers.CharField(max_length=64), required=False, allow_empty=True, max_length=50
        )
        scopes = serializers.DictField(
            child=serializers.ListField(
                child=serializers.CharField(max_length=256, validators=[validate_scope_token]), max_length=100
            ),
            required=False,
        )
        return_url = serializers.CharField(max_length=2048, trim_whitespace=False)
        tags = serializers.DictField(
            child=serializers.CharField(allow_blank=True, trim_whitespace=False), required=False
        )
        expires_in = serializers.IntegerField(
            required=False, min_value=MIN_EXPIRES_IN, max_value=MAX_EXPIRES_IN, default=DEFAULT_EXPIRES_IN
        )
        reconnect = serializers.RegexField(r"^[A-Za-z0-9_-]{1,64}$", required=False)

    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        created = connect_session_create(
            workspace=request_workspace(request),
            user_id=data.get("user_id"),
            allowed_providers=data.get("allowed_providers"),
            scopes=data.get("scopes"),
            return_url=data["return_url"],
            tags=data.get("tags"),
            expires_in=data.get("expires_in"),
            reconnect=data.get("reconnect"),
            actor=request_actor(request),
        )
        body = {
            "connect_url": created.connect_url,
            "session_id": created.session.id,
            "expires_at": created.session.expires_at,
        }
        return _no_store(Response(body, status=201))


class ConnectSessionDetailApi(APIView):
    def get(self, request, session_id: str):
        session = connect_session_get(session_id=session_id, workspace=request_workspace(request))
        return Response(connect_session_as_dict(session))


class ConnectionReconnectApi(APIView):
    class InputSerializer(serializers.Serializer):
        scopes = serializers.ListField(
            child=serializers.CharField(max_length=256, validators=[validate_scope_token]),
            required=False,
            allow_empty=True,
            max_length=100,
        )
        return_url = serializers.CharField(max_length=2048, trim_whitespace=False, required=False)

    def post(self, request, connection_id: str):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = connection_reconnect(
            connection_id=connection_id,
            workspace=request_workspace(request),
            scopes=data.get("scopes"),
            return_url=data.get("return_url"),
            actor=request_actor(request),
        )
        body = {"authUrl": result.auth_url, "connection_id": result.connection.id, "scopes": result.attempt.scopes}
        return _no_store(Response(body, status=201))
