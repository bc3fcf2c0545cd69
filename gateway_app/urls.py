from django.urls import path

from gateway_app import apis, proxy_views

urlpatterns = [
    path("v1/ping", apis.PingApi.as_view()),
    path("v1/request-connection", apis.RequestConnectionApi.as_view()),
    path("v1/check-connection/<str:connection_id>", apis.CheckConnectionApi.as_view()),
    path("v1/token/<str:connection_id>", apis.TokenApi.as_view()),
    path("v1/refresh/<str:connection_id>", apis.RefreshApi.as_view()),
    path("v1/connections", apis.ConnectionListApi.as_view()),
    path("v1/connections/<str:connection_id>", apis.ConnectionDeleteApi.as_view()),
    path("v1/providers", apis.ProviderListApi.as_view()),
    path("v1/proxy/<str:connection_id>/<path:path>", proxy_views.ProxyApi.as_view()),
]
