"""`Authorization: Bearer <api key>` for the /v1 API, plus per-key scopes and throttling."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.throttling import SimpleRateThrottle

from gateway_app.services import apikey_verify


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <api key>'.")
        principal = apikey_verify(key.strip())
        if principal is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return principal, None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="dromos"'


class HasScope(BasePermission):
    """The view's `required_scope` must be among the key's scopes."""

    message = "This API key is not allowed to perform this operation."

    def has_permission(self, request, view) -> bool:
        principal = request.user
        if principal is None:
            raise exceptions.NotAuthenticated("An API key is required: Authorization: Bearer <api key>.")
        scope = getattr(view, "required_scope", None)
        return scope is None or principal.has_scope(scope)


class ApiKeyThrottle(SimpleRateThrottle):
    scope = "api_key"

    def get_rate(self) -> str:
        from django.conf import settings

        return settings.API_KEY_RATE_LIMIT

    def get_cache_key(self, request, view) -> str | None:
        principal = request.user
        return None if principal is None else f"throttle:apikey:{principal.prefix}"
