"""Internal API for connect sessions and reconnect in place (issue 16), called by the gateway
with the workspace in X-Dromos-Workspace (see broker_app/apis.py). Inputs: dromos/wire.py."""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from broker_app.apis import _actor as request_actor
from broker_app.apis import _environment as request_environment
from broker_app.apis import _required_workspace as request_workspace
from broker_app.services.connect_sessions import (
    connect_session_as_dict,
    connect_session_create,
    connect_session_get,
)
from broker_app.services.reconnect import connection_reconnect
from dromos import wire
from dromos.http import no_store


class ConnectSessionCreateApi(APIView):
    def post(self, request):
        serializer = wire.ConnectSessionInputSerializer(data=request.data)
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
        return no_store(Response(body, status=201))


class ConnectSessionDetailApi(APIView):
    def get(self, request, session_id: str):
        session = connect_session_get(
            session_id=session_id, workspace=request_workspace(request), environment=request_environment(request)
        )
        return Response(connect_session_as_dict(session))


class ConnectionReconnectApi(APIView):
    def post(self, request, connection_id: str):
        serializer = wire.ReconnectInputSerializer(data=request.data)
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
        return no_store(Response(body, status=201))
