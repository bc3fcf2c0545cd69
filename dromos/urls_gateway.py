from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView, SpectacularSwaggerView

from dromos import health
from dromos.ops_auth import ops_only

urlpatterns = [
    path("healthz", health.healthz),
    # Operator endpoints: GATEWAY_OPS_TOKEN (dromos/ops_auth.py); /healthz stays open.
    path("readyz", ops_only(health.readyz)),
    path("metrics", ops_only(health.metrics)),
    # JSON whatever the Accept header says (SpectacularAPIView would answer YAML by default).
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("", include("gateway_app.urls")),
]

handler400 = "dromos.errors.bad_request"
handler404 = "dromos.errors.not_found"
handler500 = "dromos.errors.server_error"
