from django.urls import path

from broker_app import apis, connect_apis, connect_views, views
from dromos.wire import (
    CONNECT_SESSION,
    CONNECT_SESSIONS,
    CONNECTION,
    CONNECTION_CREDENTIALS,
    CONNECTION_RECONNECT,
    CONNECTION_REFRESH,
    CONNECTION_TOKEN,
    CONNECTIONS,
    PROVIDERS,
    PROXY_ATTENTION,
    PROXY_CREDENTIAL,
    PROXY_REFRESH,
    STATIC_CONNECTIONS,
    WORKSPACE_PROVIDER,
    WORKSPACE_PROVIDERS,
    internal_route,
)

urlpatterns = [
    path("auth/callback", views.auth_callback, name="auth-callback"),
    path("connect/<str:token>", connect_views.connect_page, name="connect-page"),
    path("connections/<str:connection_id>/refresh", apis.BrokerRefreshApi.as_view()),
    path(internal_route(CONNECTIONS), apis.ConnectionStartApi.as_view()),
    path(internal_route(CONNECTION), apis.ConnectionDetailApi.as_view()),
    path(internal_route(CONNECTION_TOKEN), apis.TokenReadApi.as_view()),
    path(internal_route(CONNECTION_REFRESH), apis.TokenRefreshApi.as_view()),
    path(internal_route(PROVIDERS), apis.ProviderListApi.as_view()),
    path(internal_route(CONNECT_SESSIONS), connect_apis.ConnectSessionCreateApi.as_view()),
    path(internal_route(CONNECT_SESSION), connect_apis.ConnectSessionDetailApi.as_view()),
    path(internal_route(CONNECTION_RECONNECT), connect_apis.ConnectionReconnectApi.as_view()),
    path(internal_route(STATIC_CONNECTIONS), apis.StaticConnectionApi.as_view()),
    path(internal_route(CONNECTION_CREDENTIALS), apis.CredentialsReplaceApi.as_view()),
    path(internal_route(PROXY_CREDENTIAL), apis.ProxyCredentialApi.as_view()),
    path(internal_route(PROXY_REFRESH), apis.ProxyRefreshApi.as_view()),
    path(internal_route(PROXY_ATTENTION), apis.ProxyAttentionApi.as_view()),
    path(internal_route(WORKSPACE_PROVIDERS), apis.WorkspaceProviderListApi.as_view()),
    path(internal_route(WORKSPACE_PROVIDER), apis.WorkspaceProviderDetailApi.as_view()),
]
