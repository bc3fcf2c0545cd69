"""`Authorization: Bearer <api key>` for the /v1 API, plus per-key scopes and throttling."""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from gateway_app import auth_throttle
from gateway_app.keys import apikey_verify
from gateway_app.ratelimit import rate_limit_hit


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            auth_throttle.record_failure(request.META.get("REMOTE_ADDR", ""))
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <api key>'.")
        address = request.META.get("REMOTE_ADDR", "")
        # A source that failed too often is refused before any database lookup (429).
        principal = apikey_verify(key.strip(), before_lookup=lambda: auth_throttle.refuse_if_blocked(address))
        if principal is None:
            auth_throttle.record_failure(address)
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


@lru_cache(maxsize=8)
def parse_rate(rate: str) -> tuple[int, int]:
    """ "600/min" → (600, 60): requests per window of seconds (s, min, h, day, as DRF spells them)."""
    count, _, period = rate.partition("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period.strip()[0]]


class ApiKeyThrottle(BaseThrottle):
    """API_KEY_RATE_LIMIT per key, counted in the shared cache (gateway_app.ratelimit.rate_limit_hit)."""

    wait_seconds: float | None = None

    def allow_request(self, request, view) -> bool:
        principal = request.user
        if principal is None:
            return True
        limit, window = parse_rate(settings.API_KEY_RATE_LIMIT)
        self.wait_seconds = rate_limit_hit(key=f"throttle:apikey:{principal.prefix}", limit=limit, window=window)
        return self.wait_seconds is None

    def wait(self) -> float | None:
        return self.wait_seconds
