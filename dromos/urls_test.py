"""Test URLconf: the broker's routes and the gateway's /v1 routes in one live server, so
the gateway's HTTP client can reach the broker without a second process."""

from django.urls import include, path

from dromos.urls_broker import urlpatterns as broker_patterns

urlpatterns = [
    path("", include("gateway_app.urls")),
    *broker_patterns,
]

handler400 = "dromos.errors.bad_request"
handler404 = "dromos.errors.not_found"
handler500 = "dromos.errors.server_error"
