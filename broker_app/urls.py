from django.urls import path

from broker_app import apis, connect_apis, connect_views, views

urlpatterns = [
    path("auth/callback", views.auth_callback, name="auth-callback"),
    path("connect/<str:token>", connect_views.connect_page, name="connect-page"),
    path("connections/<str:connection_id>/refresh", apis.BrokerRefreshApi.as_view()),
    path("internal/v1/connections", apis.ConnectionStartApi.as_view()),
    path("internal/v1/connections/<str:connection_id>", apis.ConnectionDetailApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/token", apis.TokenReadApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/refresh", apis.TokenRefreshApi.as_view()),
    path("internal/v1/providers", apis.ProviderListApi.as_view()),
    path("internal/v1/connect-sessions", connect_apis.ConnectSessionCreateApi.as_view()),
    path("internal/v1/connect-sessions/<str:session_id>", connect_apis.ConnectSessionDetailApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/reconnect", connect_apis.ConnectionReconnectApi.as_view()),
]
