from django.urls import path

from broker_app import apis, views
from dromos.wire import (
    CONNECTION,
    CONNECTION_CREDENTIALS,
    CONNECTION_REFRESH,
    CONNECTION_TOKEN,
    CONNECTIONS,
    PROVIDERS,
    STATIC_CONNECTIONS,
    internal_route,
)

urlpatterns = [
    path("auth/callback", views.auth_callback, name="auth-callback"),
    path("connections/<str:connection_id>/refresh", apis.BrokerRefreshApi.as_view()),
    path(internal_route(CONNECTIONS), apis.ConnectionStartApi.as_view()),
    path(internal_route(CONNECTION), apis.ConnectionDetailApi.as_view()),
    path(internal_route(CONNECTION_TOKEN), apis.TokenReadApi.as_view()),
    path(internal_route(CONNECTION_REFRESH), apis.TokenRefreshApi.as_view()),
    path(internal_route(PROVIDERS), apis.ProviderListApi.as_view()),
    path(internal_route(STATIC_CONNECTIONS), apis.StaticConnectionApi.as_view()),
    path(internal_route(CONNECTION_CREDENTIALS), apis.CredentialsReplaceApi.as_view()),
]
