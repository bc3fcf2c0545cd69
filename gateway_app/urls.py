from django.urls import path, register_converter

from gateway_app import apis, connect_apis, manage_apis, proxy_views


class ProxyPathConverter:
    """Any API path, CR/LF included, so the proxy itself refuses it (400) rather than the
    resolver (404)."""

    regex = "(?s:.+)"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ProxyPathConverter, "proxypath")

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
    path("v1/proxy/<str:connection_id>/<proxypath:path>", proxy_views.ProxyApi.as_view()),
    # the management API (issue 19): admin keys only
    path("v1/keys", manage_apis.KeyListApi.as_view()),
    path("v1/keys/<str:prefix>", manage_apis.KeyDetailApi.as_view()),
    path("v1/webhooks", manage_apis.WebhookListApi.as_view()),
    path("v1/webhooks/<str:webhook_id>", manage_apis.WebhookDetailApi.as_view()),
    path("v1/webhooks/<str:webhook_id>/rotate-secret", manage_apis.WebhookRotateApi.as_view()),
    path("v1/webhooks/<str:webhook_id>/deliveries", manage_apis.WebhookDeliveryListApi.as_view()),
    path(
        "v1/webhooks/<str:webhook_id>/deliveries/<str:delivery_id>/redeliver",
        manage_apis.WebhookRedeliverApi.as_view(),
    ),
    path("v1/workspace-providers", manage_apis.WorkspaceProviderListApi.as_view()),
    path("v1/workspace-providers/<str:name>", manage_apis.WorkspaceProviderDetailApi.as_view()),
    path("v1/audit", manage_apis.AuditListApi.as_view()),
    path("v1/audit/export", manage_apis.AuditExportApi.as_view()),
]
