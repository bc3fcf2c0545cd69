"""One error shape for every JSON API: {"error": "<code>", "message": "…"} plus extras.

Application code raises ApiError subclasses; DRF's own exceptions are mapped to the
same shape. Messages never contain token values."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse, JsonResponse
from django.views.defaults import bad_request as html_bad_request
from django.views.defaults import page_not_found as html_page_not_found
from django.views.defaults import server_error as html_server_error
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response


class ApiError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, *, retry_after: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.extra = extra

    def as_body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class InvalidRequest(ApiError):
    status_code, code = 400, "invalid_request"


class InvalidCredentials(ApiError):
    status_code, code = 400, "invalid_credentials"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"


class Forbidden(ApiError):
    status_code, code = 403, "forbidden"


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class ConnectionNotActive(ApiError):
    status_code, code = 409, "connection_not_active"


class RequestTooLarge(ApiError):
    status_code, code = 413, "request_too_large"


class Throttled(ApiError):
    status_code, code = 429, "rate_limited"


class BadGateway(ApiError):
    status_code, code = 502, "bad_gateway"


class ProviderError(ApiError):
    status_code, code = 502, "provider_error"


class ProviderUnavailable(ApiError):
    status_code, code = 503, "provider_unavailable"


class BrokerUnavailable(ApiError):
    status_code, code = 503, "broker_unavailable"


class DatabaseUnavailable(ApiError):
    status_code, code = 503, "service_unavailable"


logger = logging.getLogger(__name__)


def error_response(error: ApiError) -> Response:
    response = Response(error.as_body(), status=error.status_code)
    if error.retry_after is not None:
        response["Retry-After"] = str(max(1, int(error.retry_after)))
    return response


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # PostgreSQL unreachable, restarting, or a connection cut mid-request: transient, and
        # the request's transaction was rolled back, so the client may simply retry. The
        # driver's message (host, user, database) stays out of the log and the answer.
        logger.error("database unavailable (%s)", type(exc).__name__)
        return error_response(DatabaseUnavailable("The database is unavailable; retry shortly.", retry_after=2))
    if isinstance(exc, RequestDataTooBig):
        # Django would answer 400 with an HTML page; the contract says 413 JSON.
        return error_response(
            RequestTooLarge(f"Request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
        )
    if isinstance(exc, Http404):
        return error_response(NotFound("Not found."))
    if isinstance(exc, drf_exceptions.Throttled):
        return error_response(Throttled("Too many requests.", retry_after=int(exc.wait or 1)))
    if isinstance(exc, drf_exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return error_response(InvalidRequest(_first_message(details), details=details))
    if isinstance(exc, drf_exceptions.ParseError):
        return error_response(InvalidRequest("Request body is not valid JSON."))
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return Response({"error": "unsupported_media_type", "message": "Send application/json."}, status=415)
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        response = error_response(Unauthorized(str(exc.detail)))
        if getattr(exc, "auth_header", None):
            response["WWW-Authenticate"] = exc.auth_header
        return response
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return error_response(Forbidden(str(exc.detail)))
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return Response({"error": "method_not_allowed", "message": str(exc.detail)}, status=405)
    if isinstance(exc, drf_exceptions.NotAcceptable):
        return Response({"error": "not_acceptable", "message": str(exc.detail)}, status=406)
    if isinstance(exc, drf_exceptions.APIException):
        return Response({"error": "error", "message": str(exc.detail)}, status=exc.status_code)
    return None


def _first_message(details: Any) -> str:
    if isinstance(details, dict):
        for field, messages in details.items():
            text = _first_message(messages)
            return f"{field}: {text}" if field != "non_field_errors" else text
    if isinstance(details, list) and details:
        return _first_message(details[0])
    return str(details)


_PAGES = ("/admin/", "/auth/", "/static/")  # for people: Django's plain pages


def server_error(request) -> HttpResponse:
    """handler500: the JSON error shape for the APIs, Django's plain page for people (the
    admin, the provider callback)."""
    if request.path.startswith(_PAGES):
        return html_server_error(request)
    return JsonResponse({"error": "server_error", "message": "Internal server error."}, status=500)


def not_found(request, exception) -> HttpResponse:
    """handler404 for URLs that match no route: JSON for the APIs (the path is not echoed)."""
    if request.path.startswith(_PAGES):
        return html_page_not_found(request, exception)
    return JsonResponse({"error": "not_found", "message": "No such endpoint."}, status=404)


def bad_request(request, exception) -> HttpResponse:
    """handler400 (Django's SuspiciousOperation family, e.g. a Host header not in
    ALLOWED_HOSTS): JSON for the APIs, without echoing what was sent."""
    if request.path.startswith(_PAGES):
        return html_bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        message = "The Host header is not one this server answers to."
    elif isinstance(exception, RequestDataTooBig):
        return JsonResponse({"error": "request_too_large", "message": "Request body is too large."}, status=413)
    else:
        message = "Bad request."
    return JsonResponse({"error": "invalid_request", "message": message}, status=400)
