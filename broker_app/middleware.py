"""The broker is private. Every route except the provider callback, the hosted connect page
(with its static files) and the liveness probe needs the X-API-Key header; when
BROKER_ALLOWED_CIDRS is set the client address must also lie inside it. The admin uses
Django's login instead of the API key but is still held to the CIDR allowlist.

The client address is REMOTE_ADDR: the broker sits on a private network, so the peer is
the gateway, a worker or an operator's proxy, never a forwarded-for header a client wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import JsonResponse

PUBLIC_PATHS = ("/auth/callback", "/healthz")
# The hosted connect page (issue 16) and its own stylesheet and logos, for end users' browsers.
PUBLIC_PREFIXES = ("/connect/", "/static/connect/")
LOGIN_PATHS = ("/admin", "/static")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=4)
def _networks(raw: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"BROKER_ALLOWED_CIDRS: {exc}") from None


def _under(path: str, roots: tuple[str, ...]) -> bool:
    # "/admin" and "/admin/…", never "/administrator".
    return any(path == root or path.startswith(root + "/") for root in roots)


def client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


def ip_allowed(address: str) -> bool:
    if not settings.BROKER_ALLOWED_CIDRS:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:10.0.0.5 is 10.0.0.5
        ip = ip.ipv4_mapped
    return any(ip in network for network in _networks(tuple(settings.BROKER_ALLOWED_CIDRS)))


def api_key_valid(presented: str) -> bool:
    """Constant-time comparison of digests: neither the content nor the length of the
    configured key leaks through timing."""
    expected = hashlib.sha256(settings.BROKER_API_KEY.encode("utf-8")).digest()
    return hmac.compare_digest(hashlib.sha256(presented.encode("utf-8")).digest(), expected)


class BrokerAccessMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        # A malformed allowlist stops the process from starting (gunicorn loads middleware
        # while booting a worker) instead of failing every request.
        _networks(tuple(settings.BROKER_ALLOWED_CIDRS))

    def __call__(self, request):
        path = request.path_info
        if path in PUBLIC_PATHS or path.startswith((*PUBLIC_PREFIXES, *settings.BROKER_ACCESS_EXEMPT)):
            return self.get_response(request)
        if not ip_allowed(client_ip(request)):
            return JsonResponse({"error": "forbidden", "message": "client address not allowed"}, status=403)
        if _under(path, LOGIN_PATHS):
            return self.get_response(request)
        if not api_key_valid(request.META.get("HTTP_X_API_KEY", "")):
            return JsonResponse({"error": "unauthorized", "message": "missing or invalid X-API-Key"}, status=401)
        return self.get_response(request)
