"""The token read's lean request pipeline (issue 20): a WSGI wrapper in front of Django that
answers one route's common case itself and hands everything else to Django unchanged.

`GET /v1/token/{id}` (gateway) and `GET /internal/v1/connections/{id}/token` (broker) are
what agents call on every tool call. Through Django they pay for the middleware chain, URL
resolution, DRF's request wrapping, authentication/permission/throttle stages and response
rendering: more CPU than the work itself. A role's FAST_PATHS (settings) names handlers
`handler(environ) -> FastAnswer | None`; a handler answers only the case it was written for
(a well-formed request with a known, cached key, …) and returns None, before anything is
written, for anything else (no or a malformed key, an unknown host, a query it does not
parse, a connection that needs a refresh …), which Django then serves with its own errors.

What every answer keeps, exactly as the Django pipeline makes it (tests/gateway/test_fast_path.py
compares the two): the security headers (SecurityMiddleware, XFrameOptionsMiddleware), the
request id (taken from X-Request-ID when sane, echoed), the route's latency histogram and the
JSON access-log line (dromos.middleware), the ALLOWED_HOSTS check, the error shape of
dromos.errors for errors raised once the answer was committed to (a database failure while
auditing, the broker unreachable …), and the `allow` header DRF adds. `FAST_PATHS = []` (or
`TOKEN_FAST_PATH=false`) turns it off.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from http.client import responses

import orjson
from django.conf import settings
from django.core import signals
from django.core.cache import caches, close_caches
from django.core.cache.backends.base import BaseCache
from django.core.handlers.base import reset_urlconf
from django.core.signals import setting_changed
from django.db import close_old_connections, connections, reset_queries
from django.dispatch import receiver
from django.dispatch.dispatcher import _make_id
from django.http.request import split_domain_port, validate_host
from django.utils.module_loading import import_string

from dromos import wire
from dromos.errors import exception_handler
from dromos.logging import direct_handler, request_id_var, write_direct
from dromos.middleware import _SANE, REQUEST_SECONDS, access_logger

django_request_logger = logging.getLogger("django.request")


@dataclass
class FastAnswer:
    status: int
    body: bytes
    headers: list[tuple[str, str]]


Handler = Callable[[dict], "FastAnswer | None"]


_hosts_ok: dict[str, bool] = {}
_hosts_for: list = []  # the ALLOWED_HOSTS value the memo was made for


def host_allowed(environ: dict) -> bool:
    """Django's `request.get_host()` check without building a request: Host (or SERVER_NAME)
    against ALLOWED_HOSTS. False means: let Django answer (its JSON 400)."""
    if settings.USE_X_FORWARDED_HOST and "HTTP_X_FORWARDED_HOST" in environ:
        return False  # rare: Django's full logic
    host = environ.get("HTTP_HOST")
    if not host:
        return False
    if _hosts_for[:1] != [settings.ALLOWED_HOSTS]:
        _hosts_ok.clear()
        _hosts_for[:] = [settings.ALLOWED_HOSTS]
    known = _hosts_ok.get(host)
    if known is None:
        domain, _port = split_domain_port(host)
        known = bool(domain) and bool(settings.ALLOWED_HOSTS) and validate_host(domain, settings.ALLOWED_HOSTS)
        if len(_hosts_ok) < 256:  # a bounded memo: hosts are few, scanners' are not remembered past that
            _hosts_ok[host] = known
    return known


def is_secure(environ: dict) -> bool:
    header = settings.SECURE_PROXY_SSL_HEADER
    if header:
        name, value = header
        if name in environ:
            return environ[name].split(",")[0].strip() == value
    return environ.get("wsgi.url_scheme") == "https"


@lru_cache(maxsize=2)
def _security(hsts: bool) -> tuple[tuple[str, str], ...]:
    """The headers for HSTS or not, made once."""
    return tuple(_security_headers(hsts))


@receiver(setting_changed)
def _settings_changed(**kwargs) -> None:  # tests' override_settings; settings are fixed in a server
    _security.cache_clear()


def security_headers(environ: dict) -> tuple[tuple[str, str], ...]:
    """What SecurityMiddleware and XFrameOptionsMiddleware add to a JSON answer."""
    return _security(bool(settings.SECURE_HSTS_SECONDS) and is_secure(environ))


def _security_headers(hsts: bool) -> list[tuple[str, str]]:
    headers = []
    if hsts:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append(("Strict-Transport-Security", value))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        headers.append(("Referrer-Policy", policy if isinstance(policy, str) else ",".join(policy)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    if "django.middleware.clickjacking.XFrameOptionsMiddleware" in settings.MIDDLEWARE:
        headers.append(("X-Frame-Options", getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()))
    return headers


def usable(environ: dict) -> bool:
    """The request may take a fast path at all: SSL redirect off or not needed, host allowed."""
    if settings.SECURE_SSL_REDIRECT and not is_secure(environ):
        return False
    return host_allowed(environ)


_BOOLEANS = {"true": True, "True": True, "1": True, "false": False, "False": False, "0": False}


def parse_token_query(query: str) -> dict[str, bool | int] | None:
    """The token route's query as wire.TokenQuerySerializer validates it, for the query strings
    agents and the gateway send (`auto_refresh`, `min_ttl`, each once, plain values): the
    given ones, in the serializer's field order. None for anything else (Django's path
    validates it and answers its 400)."""
    given: dict[str, bool | int] = {}
    if not query:
        return given
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name in given:
            return None
        if name == "auto_refresh" and value in _BOOLEANS:
            given[name] = _BOOLEANS[value]
        elif name == "min_ttl" and value.isdigit() and len(value) <= 9 and int(value) <= wire.MIN_TTL_MAX:
            given[name] = int(value)
        else:
            return None
    return {name: given[name] for name in ("auto_refresh", "min_ttl") if name in given}


def error_answer(exc: Exception, extra_headers: Iterable[tuple[str, str]] = ()) -> FastAnswer:
    """dromos.errors' answer for an exception raised after the fast path committed to the
    request: the same body DRF would render; an unexpected exception is logged as Django logs
    it and answers handler500's JSON."""
    response = exception_handler(exc, {})
    if response is None:
        django_request_logger.error("Internal Server Error", exc_info=exc)
        return FastAnswer(
            500,
            b'{"error":"server_error","message":"Internal server error."}',
            [("Content-Type", "application/json"), *extra_headers],
        )
    body = orjson.dumps(response.data, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
    headers = [("Content-Type", "application/json"), *extra_headers]
    if response.has_header("Retry-After"):
        headers.append(("Retry-After", response["Retry-After"]))
    if response.has_header("WWW-Authenticate"):
        headers.append(("WWW-Authenticate", response["WWW-Authenticate"]))
    return FastAnswer(response.status_code, body, headers)


# What Django's WSGIHandler does around a request, through request_started / request_finished:
# the database connections' query log reset, their age (CONN_MAX_AGE), broken-transaction and
# health handling, caches closed, the URLconf reset (a no-op here). Sending the signals costs as much again
# as that work (the dispatcher, every connection looked up twice): while their receivers are
# exactly Django's own, a fast path does the same work directly; any other receiver (another
# app's, a test's) and the signals are sent as Django sends them.
def _keys(*receivers) -> list[tuple]:
    return [(_make_id(receiver), _make_id(None)) for receiver in receivers]


_STARTED = _keys(reset_queries, close_old_connections)
_FINISHED = _keys(close_old_connections, close_caches, reset_urlconf)
_cache_close_noop: dict[int, bool] = {}  # id(settings.CACHES): every backend's close() is BaseCache's no-op


def _caches_need_closing() -> bool:
    configured = settings.CACHES
    noop = _cache_close_noop.get(id(configured))
    if noop is None:
        noop = all(import_string(c["BACKEND"]).close is BaseCache.close for c in configured.values())
        _cache_close_noop.clear()
        _cache_close_noop[id(configured)] = noop
    return not noop


def _initialized_connections() -> list:
    """connections.all(initialized_only=True) with one look into the handler's context-local
    storage per alias instead of two (each look is asgiref's Local: a lock and a context
    lookup)."""
    local = connections._connections
    return [c for c in (getattr(local, alias, None) for alias in connections.settings) if c is not None]


def request_started(environ: dict) -> None:
    if [receiver[0] for receiver in signals.request_started.receivers] != _STARTED:
        signals.request_started.send(sender=__name__, environ=environ)
        return
    for connection in _initialized_connections():
        connection.queries_log.clear()
        connection.close_if_unusable_or_obsolete()


def request_finished() -> None:
    if [receiver[0] for receiver in signals.request_finished.receivers] != _FINISHED:
        signals.request_finished.send(sender=__name__)
        return
    for connection in _initialized_connections():
        connection.close_if_unusable_or_obsolete()
    if _caches_need_closing():
        caches.close_all()
    # reset_urlconf's set_urlconf(None) is left out: a fast path sets no URLconf, and every
    # request Django serves resets its own when it finishes.


class FastPaths:
    """WSGI wrapper: each handler in turn; Django when none answers."""

    def __init__(self, application, handlers: list[tuple[str, str, Handler]]) -> None:
        # (path prefix, route template for metrics and logs, handler)
        self.application = application
        self.handlers = handlers

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        for prefix, route, handler in self.handlers:
            if not path.startswith(prefix) or not usable(environ):
                continue
            started = time.perf_counter()
            incoming = environ.get("HTTP_X_REQUEST_ID", "")
            request_id = incoming if _SANE.match(incoming) else secrets.token_hex(8)
            token = request_id_var.set(request_id)
            try:
                answer = handler(environ)
                if answer is None:
                    continue
                headers = [
                    *answer.headers,
                    *security_headers(environ),
                    ("Content-Length", str(len(answer.body))),
                    ("X-Request-ID", request_id),
                ]
                _observe(environ, route, answer.status, started)
            finally:
                request_id_var.reset(token)
            start_response(f"{answer.status} {responses.get(answer.status, 'Unknown')}", headers)
            return [answer.body]
        return self.application(environ, start_response)


@lru_cache(maxsize=1024)  # routes and methods are few; statuses too
def _histogram_child(route: str, method: str, status: int):
    return REQUEST_SECONDS.labels(route=route, method=method, status=str(status))


def _observe(environ: dict, route: str, status: int, started: float) -> None:
    """dromos.middleware.RequestMetricsMiddleware's histogram and access-log line. The same
    series and the same record, made with less work per request (issue 20): the histogram's
    child for (route, method, status) is looked up once (prometheus_client's `labels()` takes
    a lock and builds its key on every call), and the record is handed to the logger without
    logging's search of the call stack for the caller's file and line, which the JSON line
    does not carry; when the configuration is settings.LOGGING's, the line is written directly
    (dromos.logging.write_direct: the same bytes without the LogRecord)."""
    elapsed = time.perf_counter() - started
    method = environ["REQUEST_METHOD"]
    _histogram_child(route, method, status).observe(elapsed)
    if access_logger.isEnabledFor(logging.INFO):
        path = environ.get("PATH_INFO", "")
        fields = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        }
        handler = direct_handler(access_logger, logging.INFO)
        if handler is not None:
            try:
                write_direct(handler, access_logger.name, logging.INFO, f"{method} {path} {status}", fields)
                return
            except Exception:  # noqa: BLE001,S110 - logging's own path reports it (handleError)  # nosec B110
                pass
        record = access_logger.makeRecord(
            access_logger.name,
            logging.INFO,
            "(unknown file)",
            0,
            "%s %s %s",
            (method, path, status),
            None,
            extra=fields,
        )
        access_logger.handle(record)
