"""Request id, request metrics and the structured access log.

The request id is taken from X-Request-ID when it looks sane, otherwise made up; it is
carried into every log record (dromos.logging), echoed in the response and forwarded
from gateway to broker, so one id follows a request through both processes.

Request latency is recorded per route template (`v1/token/<str:connection_id>`), never per
raw path, so the number of series stays bounded whatever ids and scanners send."""

from __future__ import annotations

import logging
import re
import secrets
import time

from prometheus_client import Histogram

from dromos.logging import request_id_var

_SANE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Probes and scrapes would drown the access log; they are still measured.
_QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/static/")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

access_logger = logging.getLogger("dromos.request")

REQUEST_SECONDS = Histogram(
    "dromos_http_request_duration_seconds",
    "HTTP request latency by route template, method and status code",
    ["route", "method", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _SANE.match(incoming) else secrets.token_hex(8)
        request.request_id = request_id
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


def route_of(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None or not match.route:
        return "<unmatched>"
    return "/" + match.route.lstrip("^").rstrip("$")


class RequestMetricsMiddleware:
    """Latency histogram and one JSON access-log line per request (path without its query
    string: the callback's query carries the authorization code and state)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        route = route_of(request)
        method = request.method if request.method in _METHODS else "OTHER"
        REQUEST_SECONDS.labels(route=route, method=method, status=str(response.status_code)).observe(elapsed)
        level = logging.DEBUG if request.path.startswith(_QUIET_PATHS) else logging.INFO
        # A path holding a credential (the hosted connect page's /connect/{token}) is logged as its route.
        path = route if "token" in (getattr(request.resolver_match, "kwargs", None) or {}) else request.path
        if access_logger.isEnabledFor(level):
            access_logger.log(
                level,
                "%s %s %s",
                request.method,
                path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": path,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
        return response


class AllowedHostMiddleware:
    """Check the Host header against ALLOWED_HOSTS on every request, not only where Django
    happens to build an absolute URL: a disallowed one is the JSON 400 of dromos.errors.bad_request
    everywhere. `/healthz` is exempt (probes address the process by whatever name they have)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path != "/healthz":
            request.get_host()  # raises DisallowedHost: handler400
        return self.get_response(request)
