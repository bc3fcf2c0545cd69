"""`GET /v1/token/{id}`'s common case without Django's request pipeline (dromos/fastpath.py,
issue 20): a well-formed id and query, an API key this process verified within
API_KEY_CACHE_SECONDS (or verified here, as TokenApi verifies it, when it is not), with the
`tokens:read` scope, not revoked, within its rate limit. Everything else returns None before
anything is counted and TokenApi serves it through DRF with its usual errors: a missing,
malformed, unknown or wrong key (and the failed-attempt count per address), a key with
restrictions (gateway_app/restrictions.py checks them), a revoked
one (the marker seen here drops it from the cache first), a missing scope (403), a rate
limit reached (429, counted there), Redis unusable (the degraded modes of keys.py and
ratelimit.py, logged there).

Kept exactly: the revocation marker read on every request and the per-key rate-limit count,
in one Redis round trip; the slow-call bulkhead for auto_refresh; the broker call (the same
client, headers, query and status mapping: gateway_app.broker_client) and its answer relayed
byte for byte with `no-store`."""

from __future__ import annotations

import math
import re
from contextlib import nullcontext

from django.conf import settings
from django.db import DatabaseError

from dromos import wire
from dromos.errors import ApiError, Throttled
from dromos.fastpath import FastAnswer, error_answer, parse_token_query, request_finished, request_started
from gateway_app import auth_throttle
from gateway_app.authentication import parse_rate
from gateway_app.broker_client import broker
from gateway_app.bulkhead import slow_call_slot
from gateway_app.keys import apikey_verify, cached_principal, forget, revocation_marker_key
from gateway_app.ratelimit import revoked_or_rate_limited

PREFIX = "/v1/token/"
ROUTE = "/v1/token/<str:connection_id>"
_PATH = re.compile(r"/v1/token/([A-Za-z0-9_-]{1,64})")  # gateway_app.apis.CONNECTION_ID
_ALLOW = ("Allow", "GET, HEAD, OPTIONS")
_RELAY_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache"), _ALLOW]


def _verify(key: str, environ: dict):
    """A key not verified by this process within API_KEY_CACHE_SECONDS (a new process, or
    the cached entry expired): looked up as TokenApi's authentication looks it up (the
    address that failed too often refused first, before the database), then cached. A key
    that does not verify is left to Django, which answers 401 and counts the failure."""
    address = environ.get("REMOTE_ADDR", "")
    request_started(environ)  # the database connection's checks (dromos/fastpath.py)
    try:
        return apikey_verify(key, before_lookup=lambda: auth_throttle.refuse_if_blocked(address))
    except DatabaseError:
        return None  # Django's pipeline answers it (503 service_unavailable)
    finally:
        request_finished()


def _restricted(principal) -> bool:
    """A narrow key (gateway_app/restrictions.py: an expiry, providers, users, networks) is
    left to Django, whose GatewayApi checks the restriction before any broker work."""
    return bool(
        principal.expires_at is not None
        or principal.providers is not None
        or principal.user_ids is not None
        or principal.user_prefix
        or principal.networks is not None
        or principal.narrow
    )


def serve(environ: dict) -> FastAnswer | None:
    if environ["REQUEST_METHOD"] != "GET":
        return None
    match = _PATH.fullmatch(environ["PATH_INFO"])
    if match is None:
        return None
    query = parse_token_query(environ.get("QUERY_STRING", ""))
    if query is None:
        return None
    scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        principal = cached_principal(key.strip()) or _verify(key.strip(), environ)
    except ApiError as exc:  # the address used up its failed authentications: 429
        return error_answer(exc, [_ALLOW])
    if principal is None or not principal.has_scope("tokens:read") or _restricted(principal):
        return None
    limit, window = parse_rate(settings.API_KEY_RATE_LIMIT)
    checked = revoked_or_rate_limited(
        marker=revocation_marker_key(principal.prefix),
        key=f"throttle:apikey:{principal.prefix}",
        limit=limit,
        window=window,
    )
    if checked is None:  # Redis not usable: the full path's degraded modes
        return None
    revoked, wait = checked
    if revoked:
        forget(principal.prefix)
        return None
    if wait is not None:
        return error_answer(Throttled("Too many requests.", retry_after=int(math.ceil(wait) or 1)), [_ALLOW])
    # As TokenApi sends them: booleans as "true"/"false", numbers as text.
    params = {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value) for name, value in query.items()
    }
    try:
        with slow_call_slot(principal) if params.get("auto_refresh") == "true" else nullcontext():
            answer = broker().call(
                "GET",
                wire.internal_path(wire.CONNECTION_TOKEN, match.group(1)),
                principal=principal,
                client_ip=environ.get("REMOTE_ADDR"),
                params=params,
            )
    except Exception as exc:  # the broker unreachable, a bad answer, the bulkhead full
        return error_answer(exc, [_ALLOW])
    headers = list(_RELAY_HEADERS)
    if answer.retry_after:
        headers.append(("Retry-After", answer.retry_after))
    return FastAnswer(answer.status, answer.body, headers)
