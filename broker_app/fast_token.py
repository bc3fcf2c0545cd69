"""`GET /internal/v1/connections/{id}/token`'s common case without Django's request pipeline
(dromos/fastpath.py, issue 20): the gateway's well-formed call, with the broker key, for an
active connection whose stored token is served as it is; and the same for the API proxy's
`GET …/{id}/proxy-credential` (a usable provider, no refresh due: the credential and its
audit row as ProxyCredentialApi gives them). Everything else (another method, a
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
from broker_app.services.proxy import proxy_credential_stored
from broker_app.services.reads import token_read_stored
from dromos import wire
from dromos.fastpath import FastAnswer, error_answer, parse_token_query, request_finished, request_started

PREFIX = "/internal/v1/connections/"
ROUTE = "/" + wire.CONNECTION_TOKEN.replace("{connection_id}", "<str:connection_id>")
_PATH = re.compile(r"/internal/v1/connections/([^/]+)/token")
_PROXY_PATH = re.compile(r"/internal/v1/connections/([^/]+)/proxy-credential")
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


def _caller(environ: dict, path: re.Pattern) -> tuple[str, str, Actor, dict] | None:
    """For a GET of `path` from the gateway, within BrokerAccessMiddleware's rules (in its
    order) and with a workspace and a well-formed environment: the connection id, the
    workspace, the actor and the parsed query. None for anything else: Django answers it."""
    if environ["REQUEST_METHOD"] != "GET":
        return None
    match = path.fullmatch(environ["PATH_INFO"])
    if match is None:
        return None
    query = parse_token_query(environ.get("QUERY_STRING", ""))
    workspace = environ.get("HTTP_X_DROMOS_WORKSPACE")
    if query is None or not workspace:
        return None
    # BrokerAccessMiddleware's rules for these (never public) routes.
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
    return match.group(1), workspace, actor, query


def _answered(environ: dict, read) -> FastAnswer | None:
    """Run `read` (a token view or proxy credential, or None) as Django's WSGIHandler runs a
    request: the database connection's age and health checks (CONN_MAX_AGE, dromos/db), query
    log reset, caches closed (dromos/fastpath.py); its answer rendered as the DRF view does."""
    request_started(environ)
    try:
        served = read()
        if served is None:
            return None
        return FastAnswer(200, orjson.dumps(served.as_dict(), option=_JSON), list(_SUCCESS_HEADERS))
    except Exception as exc:  # after the read was committed to: the API's error shape
        close_old_connections()
        return error_answer(exc, [_ALLOW])
    finally:
        request_finished()


def serve(environ: dict) -> FastAnswer | None:
    """GET /internal/v1/connections/{id}/token (broker_app.apis.TokenApi's common case)."""
    caller = _caller(environ, _PATH)
    if caller is None:
        return None
    connection_id, workspace, actor, query = caller
    return _answered(
        environ,
        lambda: token_read_stored(
            connection_id=connection_id,
            workspace=workspace,
            actor=actor,
            auto_refresh=query.get("auto_refresh", False),
            min_ttl=query.get("min_ttl", wire.MIN_TTL_DEFAULT),
        ),
    )


def serve_proxy_credential(environ: dict) -> FastAnswer | None:
    """GET /internal/v1/connections/{id}/proxy-credential (ProxyCredentialApi's common case:
    services.proxy.proxy_credential_stored). The view reads no query: one here goes to it."""
    caller = _caller(environ, _PROXY_PATH)
    if caller is None or environ.get("QUERY_STRING"):
        return None
    connection_id, workspace, actor, _ = caller
    return _answered(
        environ, lambda: proxy_credential_stored(connection_id=connection_id, workspace=workspace, actor=actor)
    )
