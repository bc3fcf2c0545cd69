from django.urls import path

from broker_app import apis, views

urlpatterns = [
    path("auth/callback", views.auth_callback, name="auth-callback"),
    path("connections/<str:connection_id>/refresh", apis.BrokerRefreshApi.as_view()),
    path("internal/v1/connections", apis.ConnectionStartApi.as_view()),
    path("internal/v1/connections/<str:connection_id>", apis.ConnectionDetailApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/token", apis.TokenReadApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/refresh", apis.TokenRefreshApi.as_view()),
    path("internal/v1/providers", apis.ProviderListApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/proxy-credential", apis.ProxyCredentialApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/proxy-refresh", apis.ProxyRefreshApi.as_view()),
    path("internal/v1/connections/<str:connection_id>/proxy-attention", apis.ProxyAttentionApi.as_view()),
]
