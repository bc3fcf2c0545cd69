"""`GET /internal/v1/connections/{id}/token`'s common case without Django's request pipeline
(dromos/fastpath.py, issue 20): the gateway's well-formed call, with the broker key, for an
active connection whose stored token is served as it is. Everything else (another method, a
query it does not parse, a missing or wrong X-API-Key, an address outside
BROKER_ALLOWED_CIDRS, no workspace, a malformed environment, an unknown (in the workspace's
environment) or inactive connection, a refresh due) returns
None before anything is written, and the Django view serves it with its usual errors.

Kept exactly: the broker's access rules (BrokerAccessMiddleware's checks, in its order), the
workspace and environment scoping, the `token.read` audit row written (and committed) before the token is
decrypted and answered, `no-store`, the body the DRF view renders."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import orjson
from django.db import close_old_connections

from broker_app.audit import Actor
from broker_app.middleware import api_key_valid, ip_allowed
from broker_app.services.reads import token_read_stored
from dromos import wire
from dromos.fastpath import FastAnswer, error_answer, parse_token_query, request_finished, request_started

PREFIX = "/internal/v1/connections/"
ROUTE = "/" + wire.CONNECTION_TOKEN.replace("{connection_id}", "<str:connection_id>")
_PATH = re.compile(r"/internal/v1/connections/([^/]+)/token")
_ALLOW = ("Allow", "GET, HEAD, OPTIONS")
_SUCCESS_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache"), _ALLOW]
_JSON = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


@lru_cache(maxsize=4096)
def _valid_address(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def _client_ip(environ: dict) -> str | None:
    ip = environ.get("HTTP_X_DROMOS_CLIENT_IP") or environ.get("REMOTE_ADDR") or ""
    return ip if _valid_address(ip) else None


def serve(environ: dict) -> FastAnswer | None:
    if environ["REQUEST_METHOD"] != "GET":
        return None
    match = _PATH.fullmatch(environ["PATH_INFO"])
    if match is None:
        return None
    query = parse_token_query(environ.get("QUERY_STRING", ""))
    workspace = environ.get("HTTP_X_DROMOS_WORKSPACE")
    if query is None or not workspace:
        return None
    # BrokerAccessMiddleware's rules for this (never public) route.
    if not ip_allowed(environ.get("REMOTE_ADDR", "")) or not api_key_valid(environ.get("HTTP_X_API_KEY", "")):
        return None
    environment = environ.get("HTTP_X_DROMOS_ENVIRONMENT") or wire.DEFAULT_ENVIRONMENT
    if not wire.ENVIRONMENT_PATTERN.fullmatch(environment):
        return None  # the view answers 400
    actor = Actor(
        name=environ.get("HTTP_X_DROMOS_ACTOR", "broker-api")[:128],
        workspace=workspace,
        ip=_client_ip(environ),
        environment=environment,
    )
    # What Django's WSGIHandler does around a request: the database connection's age and
    # health checks (CONN_MAX_AGE, dromos/db), query log reset, caches closed (dromos/fastpath.py).
    request_started(environ)
    try:
        view = token_read_stored(
            connection_id=match.group(1),
            workspace=workspace,
            actor=actor,
            auto_refresh=query.get("auto_refresh", False),
            min_ttl=query.get("min_ttl", wire.MIN_TTL_DEFAULT),
        )
        if view is None:
            return None
        return FastAnswer(200, orjson.dumps(view.as_dict(), option=_JSON), list(_SUCCESS_HEADERS))
    except Exception as exc:  # after the read was committed to: the API's error shape
        close_old_connections()
        return error_answer(exc, [_ALLOW])
    finally:
        request_finished()
