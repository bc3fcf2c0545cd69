"""Shared fixtures. Tests run against the real PostgreSQL and Redis (dromos.settings.test).

- `fake_provider`: the programmable provider (tests/support/fake_provider.py).
- `fake_app`: GitHub App and Google service-account token endpoints checking the app's JWT.
- `stack`: a live server serving broker + gateway routes on one port; the gateway's
  HTTP client calls the broker through it, exactly as in production (two HTTP hops).
- `oidc_node`: the real oidc-provider (npm), registered for the live server's callback.
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

# Helpers are imported by module name: the test-only ones from tests/support/ (fake_provider, relay),
# the development tools from devtools/ (stack, oidc_server, oidc_consent — devtools never imports tests).
sys.path.insert(0, str(Path(__file__).parent / "support"))
sys.path.insert(0, str(Path(__file__).parent.parent / "devtools"))

from fake_provider import CLIENT_ID, CLIENT_SECRET, FakeProvider  # noqa: E402

# Fixtures that start real processes (gunicorn gateway and broker, Celery, the npm OIDC
# provider): a test using one is `live`, and `make test-fast` (-m "not live and not browser")
# leaves it out. Modules that start processes themselves set `pytestmark = pytest.mark.live`;
# a test that starts a Python child process (manage.py, python -c, bandit: ≈ 1 s of CPU each)
# carries `@pytest.mark.live` itself.
LIVE_FIXTURES = frozenset(
    {"real_stack", "ops_stack", "refresh_stack", "relayed_stack", "redis_relayed_stack", "run_stack"}
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (
            item.get_closest_marker("e2e")
            or item.get_closest_marker("browser")
            or LIVE_FIXTURES & set(item.fixturenames)
        ):
            item.add_marker(pytest.mark.live)
    # xdist hands tests out in this order. The ~2,100 provider contract tests (a few ms each)
    # go last: they fill the end of both workers' runs, where a long test (a consent over HTTP,
    # a child process) would otherwise keep one worker busy while the other has nothing left.
    items.sort(key=lambda item: item.nodeid.startswith("tests/providers/"))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_keepdb, django_db_blocker):
    """Transactional tests end by emptying every table (Django's flush). On PostgreSQL that is
    one TRUNCATE of all tables, which creates and fsyncs new files for each: ~1 s per test on
    this machine's disk, most of the suite's time. DELETE inside the flush's transaction (the
    foreign keys Django creates are deferrable, checked at its commit) empties them in ~10 ms.
    Sequences are not reset either way (a flush with reset_sequences keeps TRUNCATE)."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or not tables:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        kept = {"django_content_type", "auth_permission"}
        deletes = (f"DELETE FROM {self.quote_name(table)}" for table in tables if table not in kept)  # noqa: S608 - Django's table names
        return ["SET CONSTRAINTS ALL DEFERRED", *deletes]

    DatabaseOperations.sql_flush = sql_flush
    # The flush that ends a transactional test re-sends post_migrate, which re-creates every
    # content type and permission it just deleted (dozens of queries and commits per test).
    # Both tables are kept instead (the flush skips them), so the signal has nothing to do.
    from django.core.management.commands import flush

    emit = flush.emit_post_migrate_signal
    flush.emit_post_migrate_signal = lambda *args, **kwargs: None
    if django_db_keepdb:
        # `--reuse-db` (make test-fast) keeps the test database between runs: no CREATE and
        # no DROP DATABASE (a checkpoint of the whole cluster) per xdist worker, no migrations
        # to replay. A run stopped mid-test may have left rows: start from empty tables.
        from django.core.management import call_command

        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0, reset_sequences=False)
    yield
    _close_live_server_connections()  # before the test database is dropped
    flush.emit_post_migrate_signal = emit
    DatabaseOperations.sql_flush = truncate


@pytest.fixture(scope="session", autouse=True)
def _live_server_hangs_up_on_a_broken_answer():
    """When an answer fails after its headers went out (a streamed body that breaks off),
    gunicorn closes the connection, so the client sees the body cut short at once. Django's
    test server logs the error and keeps the connection open for the next request instead,
    and a client reading the body waits for its own read timeout (10 s in the proxy tests).
    The live server hangs up too, as production does."""
    from django.core.servers.basehttp import ServerHandler

    handle_error = ServerHandler.handle_error

    def hang_up(self):
        if self.headers_sent:
            self.request_handler.close_connection = True
        handle_error(self)

    ServerHandler.handle_error = hang_up
    yield
    ServerHandler.handle_error = handle_error


# Database connections of the live server's request threads, kept for the next request.
# `_close_live_server_connections()` starts a new generation: sets of an older one that are
# still in use by a request are closed when that request ends instead of being kept.
_LIVE_SERVER_POOL: dict = {"sets": [], "generation": 0, "lock": threading.Lock()}


@pytest.fixture(scope="session", autouse=True)
def _live_server_keeps_its_database_connections():
    """Django's test server serves each HTTP connection on a new thread and closes that
    thread's database connections when it ends: every request the tests make opened a new
    PostgreSQL session (a backend process, its catalog caches), several per test. gunicorn's
    threads keep theirs (CONN_MAX_AGE); the live server now does too: a request thread takes
    a set of connections left by an earlier one. At the end of each request one that is
    mid-transaction, has seen an error or is past CONN_MAX_AGE is closed (what Django's
    request-boundary check does, without touching the database). All are closed before the
    test database is dropped (django_db_setup above) and when tracing is switched on or off
    (`traced`: only connections opened after the switch are instrumented)."""
    import socketserver

    from django.core.servers.basehttp import ThreadedWSGIServer
    from django.db import connections

    pool = _LIVE_SERVER_POOL
    process_request_thread = ThreadedWSGIServer.process_request_thread
    close_connections = ThreadedWSGIServer._close_connections

    def reuse(self, request, client_address):
        if self.connections_override:  # SQLite in memory: Django shares the test's own connection
            return process_request_thread(self, request, client_address)
        with pool["lock"]:
            generation = pool["generation"]
            kept = pool["sets"].pop() if pool["sets"] else None
        if kept is None:
            kept = {alias: connections.create_connection(alias) for alias in connections}
            for conn in kept.values():
                conn.inc_thread_sharing()
        for alias, conn in kept.items():
            connections[alias] = conn
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            for conn in kept.values():
                if conn.connection is not None and not _reusable(conn):
                    conn.close()
            with pool["lock"]:
                if generation == pool["generation"]:
                    pool["sets"].append(kept)
                    kept = None
            for conn in (kept or {}).values():
                conn.close()

    def keep(self):
        if self.connections_override:
            close_connections(self)

    ThreadedWSGIServer.process_request_thread = reuse
    ThreadedWSGIServer._close_connections = keep
    yield
    ThreadedWSGIServer.process_request_thread = process_request_thread
    ThreadedWSGIServer._close_connections = close_connections
    _close_live_server_connections()


def _reusable(conn) -> bool:
    import time

    from psycopg.pq import TransactionStatus

    raw = conn.connection
    return not (
        raw.closed
        or conn.in_atomic_block
        or conn.errors_occurred
        or conn.autocommit != conn.settings_dict["AUTOCOMMIT"]
        or raw.info.transaction_status != TransactionStatus.IDLE
        or (conn.close_at is not None and time.monotonic() >= conn.close_at)
    )


def _close_live_server_connections() -> None:
    with _LIVE_SERVER_POOL["lock"]:
        _LIVE_SERVER_POOL["generation"] += 1
        idle, _LIVE_SERVER_POOL["sets"] = _LIVE_SERVER_POOL["sets"], []
    for kept in idle:
        for conn in kept.values():
            conn.close()


@pytest.fixture(scope="session", autouse=True)
def _redis_database_per_worker():
    """pytest-django gives each xdist worker its own PostgreSQL database; this gives each its
    own Redis database, so one worker's cache flush never touches another's locks/counters."""
    import os

    from django.conf import settings
    from django.test.utils import override_settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not settings.REDIS_URL:
        yield
        return
    url = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{15 - int(worker[2:]) % 8}"
    caches = {"default": {**settings.CACHES["default"], "LOCATION": url}}
    with override_settings(REDIS_URL=url, CACHES=caches, CELERY_BROKER_URL=url):
        yield


@pytest.fixture(scope="session")
def _fake_provider_server():
    provider = FakeProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def _fake_app_server():
    from fake_app_providers import FakeAppProviders

    server = FakeAppProviders().start()
    yield server
    server.stop()


@pytest.fixture
def fake_app(_fake_app_server):
    """GitHub App and Google service-account token endpoints that check the app's JWT as
    the providers document it (tests/support/fake_app_providers.py)."""
    _fake_app_server.reset()
    yield _fake_app_server
    _fake_app_server.reset()


@pytest.fixture
def fake_provider(_fake_provider_server):
    _fake_provider_server.reset()
    from broker_app.oauth import oidc

    oidc.cache_clear()
    yield _fake_provider_server
    _fake_provider_server.reset()


def starts_python(args) -> bool:
    """Whether a Popen argv starts a Python interpreter (this one or another)."""
    argv = [args] if isinstance(args, str | bytes | Path) else list(args)
    first = str(argv[0]) if argv else ""
    return first == sys.executable or Path(first.split()[0] if first else "").name.startswith("python")


_RUNNING: dict[str, object] = {"item": None}  # the test being run, set around each one


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _RUNNING["item"] = item
    yield
    _RUNNING["item"] = None


def _python_children_only_in_live_tests() -> None:
    """A test that is not `live` may not start a Python child process (about 1 s of CPU each):
    `make test-fast` leaves live tests out, so a new test that does must be marked."""
    import subprocess

    original = subprocess.Popen.__init__

    def guarded(self, args, *more, **options):
        item = _RUNNING["item"]
        if item is not None and starts_python(args) and not item.get_closest_marker("live"):
            raise AssertionError(f"{item.nodeid} starts a Python child process: mark it @pytest.mark.live")
        return original(self, args, *more, **options)

    subprocess.Popen.__init__ = guarded


_python_children_only_in_live_tests()


@pytest.fixture(autouse=True)
def _clear_process_caches():
    from broker_app.providers import registry
    from gateway_app import keys

    keys.cache_clear()
    registry.cache_clear()
    from django.core.cache import cache

    cache.clear()
    yield


def make_provider(
    *,
    name: str,
    discovery_url: str,
    client_id: str,
    client_secret: str,
    default_scopes: list[str] | None = None,
    template: str = "oidc",
    **fields,
):
    from broker_app.models import Provider
    from broker_app.providers.registry import set_client_secret

    provider = Provider(
        name=name,
        template=template,
        discovery_url=discovery_url,
        client_id=client_id,
        default_scopes=default_scopes or ["openid", "email", "profile"],
        **fields,
    )
    set_client_secret(provider, client_secret)
    provider.save()
    return provider


@pytest.fixture
def fake_provider_row(db, fake_provider):
    return make_provider(
        name="fake", discovery_url=fake_provider.discovery_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )


@dataclass
class Stack:
    url: str

    def key(self, workspace: str = "ws-a", scopes: list[str] | None = None, environment: str = "production") -> str:
        from gateway_app.keys import apikey_create

        _, plaintext = apikey_create(workspace=workspace, name="test", scopes=scopes, environment=environment)
        return plaintext

    def call(self, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return requests.request(method, self.url + path, headers=headers, timeout=30, allow_redirects=False, **kwargs)

    def callback(self, **params) -> requests.Response:
        return requests.get(f"{self.url}/auth/callback", params=params, timeout=30, allow_redirects=False)

    def broker(self, method: str, path: str, **kwargs) -> requests.Response:
        from django.conf import settings

        headers = {"X-API-Key": settings.BROKER_API_KEY, **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, allow_redirects=False, **kwargs)


@pytest.fixture
def stack(live_server, settings, transactional_db):
    settings.BASE_URL = live_server.url
    settings.BROKER_INTERNAL_URL = live_server.url
    from gateway_app import broker_client

    broker_client.reset()
    yield Stack(url=live_server.url)
    broker_client.reset()


@pytest.fixture
def traced(stack, live_server):
    """OpenTelemetry on in this process (dromos/tracing.py, every instrumentation, spans scrubbed
    as in production) into an in-memory exporter; the live server's middleware is reloaded so
    Django's server spans are made too. Yields the exporter; everything is undone after."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dromos import tracing

    handlers = [live_server.thread.httpd.get_app()]
    while hasattr(handlers[-1], "application"):  # static and media file handlers around Django's
        handlers.append(handlers[-1].application)

    def reload_middleware():
        for handler in handlers:
            handler.load_middleware()

    exporter = InMemorySpanExporter()
    provider = tracing.tracer_provider("test", exporter, simple=True)
    tracing.instrument(provider)
    reload_middleware()
    _close_live_server_connections()  # the database instrumentation wraps new connections
    try:
        yield exporter
    finally:
        tracing.uninstrument()
        reload_middleware()
        _close_live_server_connections()
        provider.shutdown()


def auth_params(auth_url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(auth_url).query).items()}


def start_connection(
    stack: Stack,
    key: str,
    *,
    provider: str = "fake",
    return_url: str = "https://app.example.com/oauth/return",
    scopes: list[str] | None = None,
    **extra,
) -> dict:
    body = {
        "user_id": "user-1",
        "provider_name": provider,
        "scopes": scopes or ["openid", "email"],
        "return_url": return_url,
        **extra,
    }
    response = stack.call("POST", "/v1/request-connection", key, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def connect(stack: Stack, fake: FakeProvider, key: str, **kwargs) -> str:
    """Run the consent flow against the fake provider; return the active connection id."""
    started = start_connection(stack, key, **kwargs)
    params = auth_params(started["authUrl"])
    code = fake.issue_code(code_challenge=params["code_challenge"], nonce=params.get("nonce"))
    response = stack.callback(code=code, state=params["state"], iss=fake.issuer)
    assert response.status_code == 302, response.text
    assert "status=success" in response.headers["Location"], response.headers["Location"]
    return started["connection_id"]


SECRETISH = re.compile(r"(at|rt)-[A-Za-z0-9_-]{20,}")
