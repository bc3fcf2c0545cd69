"""OpenTelemetry traces (dromos/tracing.py): one token fetch with auto_refresh is one trace
across gateway → broker → PostgreSQL, Redis and the provider, with W3C trace context on the
internal hop and on the provider call; no secret in any span; off by default, and then
nothing of OpenTelemetry is even imported.

The in-process tests use the `traced` fixture (tests/conftest.py): every instrumentation on,
spans scrubbed exactly as in production, collected by an in-memory exporter; the live server
serves gateway and broker routes on one port, so the gateway's broker client makes the real
HTTP hop to the broker's routes."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from fake_provider import CLIENT_ID, CLIENT_SECRET
from opentelemetry.trace import SpanKind

from broker_app.models import Connection
from dromos.tracing import scrub_url
from tests.conftest import auth_params, start_connection

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def _get(stack, path, key=None):
    """The agent's call: plain http.client, outside the traced libraries (the gateway's span is
    the root, as for an agent that sends no traceparent)."""
    host, port = stack.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _connect(stack, fake_provider, key):
    """The consent flow, the browser's redirect by http.client. Returns (connection id, the
    flow's secrets)."""
    started = start_connection(stack, key)
    params = auth_params(started["authUrl"])
    code = fake_provider.issue_code(code_challenge=params["code_challenge"], nonce=params["nonce"])
    status, _ = _get(stack, f"/auth/callback?code={code}&state={params['state']}&iss={fake_provider.issuer}")
    assert status == 302
    return started["connection_id"], {"authorization code": code, "state": params["state"], "nonce": params["nonce"]}


def _dump(span) -> str:
    return span.to_json() + json.dumps(dict(span.resource.attributes))


def _secrets(key: str, flow: dict, fake_provider) -> dict[str, str]:
    found = {
        "API key": key,
        "client secret": CLIENT_SECRET,
        "client Basic auth": base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode(),
        "BROKER_API_KEY": settings.BROKER_API_KEY,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        **flow,
    }
    for index, value in enumerate(settings.TOKEN_ENCRYPTION_KEYS.split(",")):
        found[f"token key {index}"] = value.strip()
    for index, token in enumerate(fake_provider.grants):
        found[f"refresh token {index}"] = token
    return found


def test_token_fetch_with_auto_refresh_is_one_trace_without_a_secret(traced, stack, fake_provider, fake_provider_row):
    key = stack.key()
    cid, flow = _connect(stack, fake_provider, key)
    consent_spans = traced.get_finished_spans()
    Connection.objects.filter(pk=cid).update(expires_at=timezone.now() + timedelta(seconds=30))
    traced.clear()

    status, body = _get(stack, f"/v1/token/{cid}?auto_refresh=true", key)
    assert status == 200, body
    assert fake_provider.refresh_calls == 1  # the read refreshed at the provider
    access_token = json.loads(body)["access_token"]
    spans = traced.get_finished_spans()

    # One trace, rooted at the gateway's server span.
    assert len({span.context.trace_id for span in spans}) == 1, [s.name for s in spans]
    by_id = {span.context.span_id: span for span in spans}
    roots = [span for span in spans if span.parent is None]
    assert [root.name for root in roots] == ["GET v1/token/<str:connection_id>"]
    gateway = roots[0]
    assert gateway.kind == SpanKind.SERVER and gateway.attributes["http.status_code"] == 200

    def ancestors(span):
        chain = []
        while span.parent is not None:
            assert not span.parent.is_remote or span.parent.span_id in by_id
            span = by_id[span.parent.span_id]
            chain.append(span)
        return chain

    # gateway → its HTTP client call → the broker's server span (the traceparent it sent).
    (hop,) = [s for s in spans if s.kind == SpanKind.CLIENT and "/internal/v1/" in s.attributes.get("http.url", "")]
    assert hop.parent.span_id == gateway.context.span_id
    assert hop.instrumentation_scope.name == "opentelemetry.instrumentation.urllib3"
    (broker,) = [s for s in spans if s.name == "GET internal/v1/connections/<str:connection_id>/token"]
    assert broker.kind == SpanKind.SERVER and broker.parent.span_id == hop.context.span_id
    assert broker.parent.is_remote  # read from the W3C traceparent header, not shared memory

    # Under the broker: PostgreSQL statements (placeholders, no values), and the provider's
    # token endpoint called with a traceparent of its own span.
    database = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    assert database and all(broker in ancestors(s) for s in database)
    statements = [s.attributes["db.statement"] for s in database]
    assert any(
        'UPDATE "broker_app_connection" SET "access_token_enc" = %s, "refresh_token_enc" = %s' in sql
        for sql in statements
    )
    assert not [key for s in database for key in s.attributes if "param" in key]
    (provider,) = [s for s in spans if s.attributes.get("http.url") == f"{fake_provider.url}/token"]
    assert provider.kind == SpanKind.CLIENT and provider.attributes["http.method"] == "POST"
    assert broker in ancestors(provider)
    version, trace_id, parent_id, flags = fake_provider.last_traceparent.split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{provider.context.trace_id:032x}",
        f"{provider.context.span_id:016x}",
    )
    assert int(flags, 16) & 1  # sampled
    # Redis (rate limits, caches): command names, every argument a "?" (a pipeline: one
    # command a line).
    cache = [s for s in spans if s.attributes.get("db.system") == "redis"]
    assert cache
    for span in cache:
        for line in span.attributes["db.statement"].splitlines():
            name, *arguments = line.split(" ")
            assert name.isalpha() and name.isupper() and set(arguments) <= {"?"}, line

    secrets = _secrets(key, flow, fake_provider) | {"access token": access_token}
    assert len(secrets) >= 10
    for span in [*consent_spans, *spans]:
        text = _dump(span)
        leaked = [name for name, value in secrets.items() if value and value in text]
        assert not leaked, (leaked, span.name)
    # The consent flow's callback was traced too, its code and state scrubbed from the URL.
    (callback,) = [s for s in consent_spans if s.name == "GET auth/callback"]
    assert callback.attributes["http.url"].endswith("/auth/callback")


def test_connect_page_token_and_query_strings_are_scrubbed(traced, stack):
    token = "cs-tok-" + "x" * 30
    _get(stack, f"/connect/{token}?session={token}")
    spans = traced.get_finished_spans()
    assert spans
    assert not [s.name for s in spans if token in _dump(s)]
    assert any(s.attributes.get("http.url", "").endswith("/connect/:token") for s in spans)


def test_an_agents_traceparent_is_continued(traced, stack):
    """An agent that sends W3C trace context gets the gateway's spans in its own trace."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    host, port = stack.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/v1/ping", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert conn.getresponse().status == 200
    conn.close()
    (server,) = [s for s in traced.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert f"{server.context.trace_id:032x}" == trace_id and f"{server.parent.span_id:016x}" == parent_id


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("https://user:pw@api.example.com/v1/x?access_token=abc#frag", "https://api.example.com/v1/x"),
        ("/auth/callback?code=abc&state=def", "/auth/callback"),
        ("http://h:8001/connect/cs_secret/logo.png", "http://h:8001/connect/:token/logo.png"),
        ("http://h/internal/v1/connections/c_1/token", "http://h/internal/v1/connections/c_1/token"),
    ],
)
def test_scrub_url(url, clean):
    assert scrub_url(url) == clean


def test_headers_exception_messages_and_parameters_never_leave(traced, stack):
    """Even with header capture configured, a span's headers, exception messages and stacks
    are dropped before export (only the exception's type stays)."""
    from opentelemetry import trace

    from dromos import tracing

    provider = tracing.tracer_provider("test", traced, simple=True)
    tracer = provider.get_tracer("leak-check")
    with tracer.start_as_current_span("x") as span:
        span.set_attribute("http.request.header.authorization", ["Bearer sekrit-value-123456"])
        span.set_attribute("http.response.header.set_cookie", ["sessionid=sekrit-value-123456"])
        span.set_attribute("url.query", "code=sekrit-value-123456")
        span.set_attribute("db.query.parameter.0", "sekrit-value-123456")
        try:
            raise ValueError("refresh failed for sekrit-value-123456")
        except ValueError as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
    (exported,) = [s for s in traced.get_finished_spans() if s.name == "x"]
    assert "sekrit" not in _dump(exported)
    assert exported.events[0].attributes == {"exception.type": "ValueError", "exception.escaped": "False"} or dict(
        exported.events[0].attributes
    ) == {"exception.type": "ValueError"}


def _wsgi_probe(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OTEL_") and key not in {"DJANGO_SETTINGS_MODULE"}
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "dromos.settings.gateway", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


PROBE = (
    "import sys, dromos.wsgi; from django.conf import settings; "
    "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('opentelemetry.')})); "
    "print(settings.MIDDLEWARE[0]); "
    "from opentelemetry import trace; print(type(trace.get_tracer_provider()).__name__)"
)


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_off_by_default_nothing_of_opentelemetry_is_installed():
    """Off: no instrumentation or exporter is imported, no middleware added, no tracer provider
    set. (redis-py imports the OpenTelemetry API and SDK itself when they are installed, for its
    own opt-in metrics, which stay off: not Dromos's doing and not on by it.)"""
    done = _wsgi_probe({}, PROBE)
    assert done.returncode == 0, done.stderr
    imported, first_middleware, provider = done.stdout.splitlines()[-3:]
    assert "instrumentation" not in imported and "exporter" not in imported, imported
    assert first_middleware == "dromos.middleware.RequestIdMiddleware"
    assert provider == "ProxyTracerProvider"  # the API's no-op default
    # An exporter named but the SDK disabled, or an endpoint but the exporter `none`: still off.
    for env in (
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
    ):
        done = _wsgi_probe(env, PROBE)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-2:] == ["dromos.middleware.RequestIdMiddleware", "ProxyTracerProvider"], env


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_on_with_the_standard_variables():
    done = _wsgi_probe(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/", "OTEL_SERVICE_NAME": "gw-1"},
        PROBE + "; print(trace.get_tracer_provider().resource.attributes['service.name'])",
    )
    assert done.returncode == 0, done.stderr
    imported, first_middleware, provider, service = done.stdout.splitlines()[-4:]
    assert {"instrumentation", "sdk", "exporter"} <= set(json.loads(imported.replace("'", '"')))
    assert first_middleware.startswith("opentelemetry.instrumentation.django")
    assert provider == "TracerProvider" and service == "gw-1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER must be one of otlp, console or none"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "is not supported"),
        ({"OTEL_SDK_DISABLED": "maybe", "OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_SDK_DISABLED must be true or false"),
    ],
)
@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_bad_settings_are_refused_at_start(env, message):
    done = _wsgi_probe(env, "import dromos.wsgi")
    assert done.returncode != 0 and message in done.stderr


UNCONSUMED = "tracing-test-queue-no-worker-reads"


def test_a_queued_task_carries_the_trace(traced, settings):
    """The publish side of the Celery instrumentation: a task queued inside a traced request
    gets a producer span of that trace, and the message's headers carry its traceparent, which
    the worker's run span continues (the run side is the instrumentation's own)."""
    from celery import signals

    from broker_app import queue
    from dromos import tracing

    published = []

    def record(headers=None, **_):
        published.append(dict(headers or {}))

    signals.before_task_publish.connect(record, weak=False)
    tracer = tracing.tracer_provider("test", traced, simple=True).get_tracer("test")
    try:
        with tracer.start_as_current_span("request") as request:
            queue.task("retry_revocations").apply_async(queue=UNCONSUMED)
    finally:
        signals.before_task_publish.disconnect(record)
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(UNCONSUMED)
    trace_id = f"{request.get_span_context().trace_id:032x}"
    (producer,) = [s for s in traced.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert (
        f"{producer.context.trace_id:032x}" == trace_id
        and producer.parent.span_id == request.get_span_context().span_id
    )
    (headers,) = published
    assert headers["traceparent"].split("-")[1:3] == [trace_id, f"{producer.context.span_id:016x}"]


def test_redis_commands_outside_a_request_or_task_are_not_recorded(traced, settings):
    """Celery's and kombu's own Redis polling in a worker is a root span each, thousands a
    minute: not recorded. The same command inside a task (or a request) is."""
    from dromos import tracing

    client = redis.Redis.from_url(settings.REDIS_URL)
    tracer = tracing.tracer_provider("worker", traced, simple=True).get_tracer("test")
    client.ping()
    with tracer.start_as_current_span("run/broker_app.tasks.deliver_webhook", kind=SpanKind.CONSUMER) as task:
        client.ping()
    spans = traced.get_finished_spans()
    assert [s.name for s in spans] == ["PING", "run/broker_app.tasks.deliver_webhook"]
    assert spans[0].parent.span_id == task.get_span_context().span_id
