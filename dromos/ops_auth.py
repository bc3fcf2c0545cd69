"""The gateway's operator endpoints (`/readyz`, `/metrics`) behind a bearer token.

The gateway listens on the public port, where readiness details (which dependency is down)
and metrics (routes, error rates, key prefixes' throttling) are nobody's business. With
GATEWAY_OPS_TOKEN set, those two answer only to `Authorization: Bearer <GATEWAY_OPS_TOKEN>`
(constant-time comparison) and 401 JSON otherwise. Unset, they are closed to everyone
(401) unless DEBUG is on: the safe choice is the default, and commands that load the gateway
settings (`migrate`, `apikey`) do not need the token. `/healthz` stays open (it says only
"ok", for liveness probes and load balancers). The broker's own are behind its X-API-Key."""

from __future__ import annotations

import hashlib
import hmac
from functools import wraps

from django.conf import settings
from django.http import JsonResponse


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def ops_token_valid(request) -> bool:
    token = settings.GATEWAY_OPS_TOKEN
    if not token:
        return settings.DEBUG
    scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(_digest(presented.strip()), _digest(token))


def ops_only(view):
    """Wrap an operator view: 401 JSON without the ops token."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not ops_token_valid(request):
            response = JsonResponse(
                {"error": "unauthorized", "message": "this endpoint needs Authorization: Bearer <GATEWAY_OPS_TOKEN>"},
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="dromos-ops"'
            return response
        return view(request, *args, **kwargs)

    return wrapped
