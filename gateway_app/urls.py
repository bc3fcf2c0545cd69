from django.urls import path

from gateway_app import apis, connect_apis

urlpatterns = [
    path("v1/ping", apis.PingApi.as_view()),
    path("v1/request-connection", apis.RequestConnectionApi.as_view()),
    path("v1/check-connection/<str:connection_id>", apis.CheckConnectionApi.as_view()),
    path("v1/token/<str:connection_id>", apis.TokenApi.as_view()),
    path("v1/refresh/<str:connection_id>", apis.RefreshApi.as_view()),
    path("v1/connections", apis.ConnectionListApi.as_view()),
    path("v1/connections/<str:connection_id>", apis.ConnectionDeleteApi.as_view()),
    path("v1/connections/<str:connection_id>/credentials", apis.CredentialsReplaceApi.as_view()),
    path("v1/providers", apis.ProviderListApi.as_view()),
    path("v1/connect-sessions", connect_apis.ConnectSessionCreateApi.as_view()),
    path("v1/connect-sessions/<str:session_id>", connect_apis.ConnectSessionDetailApi.as_view()),
    path("v1/connections/<str:connection_id>/reconnect", connect_apis.ReconnectApi.as_view()),
]
