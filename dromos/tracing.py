"""OpenTelemetry traces: gateway → broker → provider, PostgreSQL, Redis and Celery in one trace.

Off by default, and then nothing of OpenTelemetry is imported or installed: the request path
is exactly what it is without this module. On when `settings.TRACING_ENABLED`
(dromos/settings/base.py: `OTEL_TRACES_EXPORTER` or an OTLP endpoint is set, and
`OTEL_SDK_DISABLED` is not true). The exporter, sampler, resource and batching read the
standard `OTEL_*` variables themselves (the SDK's own reading of them).

`setup(role)` is called once per process, before Django loads its middleware (dromos/wsgi.py)
or, in a Celery pool process, when it starts (dromos/celery.py). It installs the
instrumentations from PyPI: Django (server spans, the W3C `traceparent` read from the
gateway's call), urllib3 (the gateway's broker client and API proxy: `traceparent` sent on the
internal hop and to providers), requests (the broker's calls to providers, webhooks), psycopg
(statements with their placeholders, never parameters), redis (commands as `GET ?`, never
arguments) and Celery (publish and run spans linked across the queue).

Every span passes `ScrubbingSpanExporter` before it leaves the process: no query string, no
userinfo in a URL, no connect-session token in a path, no captured header, no exception message
or stack (an exception's type only; the log line with the request id has the rest). So a token,
code, secret or key cannot reach a collector even if an instrumentation or an operator's
`OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*` setting would record one
(tests/ops/test_tracing.py, tests/security/test_no_leak.py).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_installed: dict[str, Any] = {}

# Attributes whose value is a URL or a path (old and stable HTTP semantic conventions).
_URL_KEYS = frozenset({"http.url", "url.full", "http.target", "url.path", "http.request.uri"})
_DROP_KEYS = frozenset({"url.query", "db.statement.parameters", "db.query.parameter"})
_DROP_PREFIXES = ("http.request.header.", "http.response.header.", "db.query.parameter.", "messaging.message.body")
# Path segments that are secrets: the hosted connect page's session token.
_SECRET_SEGMENT = re.compile(r"(/connect/)[^/?#]+")
_EXCEPTION_KEEP = frozenset({"exception.type", "exception.escaped"})
EXPORTERS = ("otlp", "console")


def scrub_url(value: str) -> str:
    """The URL or path without query, fragment, userinfo or secret path segments."""
    parts = urlsplit(value)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    path = _SECRET_SEGMENT.sub(r"\1:token", parts.path)
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def scrub_attributes(attributes) -> dict:
    clean = {}
    for key, value in (attributes or {}).items():
        if key in _DROP_KEYS or key.startswith(_DROP_PREFIXES):
            continue
        if key in _URL_KEYS and isinstance(value, str):
            value = scrub_url(value)
        clean[key] = value
    return clean


def _scrub_span(span):
    from opentelemetry.sdk.trace import Event, ReadableSpan

    events = []
    for event in span.events:
        attributes = scrub_attributes(event.attributes)
        if event.name == "exception":
            attributes = {k: v for k, v in attributes.items() if k in _EXCEPTION_KEEP}
        events.append(Event(event.name, attributes, event.timestamp))
    return ReadableSpan(
        name=_SECRET_SEGMENT.sub(r"\1:token", span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub_attributes(span.attributes),
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _scrubbing_exporter(inner):
    from opentelemetry.sdk.trace.export import SpanExporter

    class ScrubbingSpanExporter(SpanExporter):
        def __init__(self, inner):
            self.inner = inner

        def export(self, spans):
            return self.inner.export([_scrub_span(span) for span in spans])

        def shutdown(self):
            return self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000):
            return self.inner.force_flush(timeout_millis)

    return ScrubbingSpanExporter(inner)


def _configured_exporter(name: str):
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if name not in EXPORTERS:
        raise ImproperlyConfigured(f"OTEL_TRACES_EXPORTER must be one of otlp, console or none, not {name!r}")
    if name == "otlp" and settings.OTEL_EXPORTER_OTLP_PROTOCOL != "http/protobuf":
        raise ImproperlyConfigured(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {settings.OTEL_EXPORTER_OTLP_PROTOCOL!r} is not supported: "
            "Dromos ships the OTLP exporter over HTTP (http/protobuf; a collector's port 4318)"
        )
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracer_provider(role: str, exporter=None, *, simple: bool = False):
    """A TracerProvider whose spans are scrubbed, then exported by `exporter` (default: the one
    OTEL_TRACES_EXPORTER names, OTLP over HTTP unless `console`). `simple`: export each span as
    it ends (tests, the rendering script) instead of in batches. The sampler is the one
    OTEL_TRACES_SAMPLER names (default: every trace).

    Its `redis` attribute is the provider the Redis instrumentation uses: the same processor,
    but a Redis command outside any request or task (Celery's and kombu's own polling in a
    worker: a root span each, thousands a minute, saying nothing about a call) is not recorded.
    Nothing is ever a child of a Redis span, so no trace loses a link by it."""
    from django.conf import settings
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    service = settings.OTEL_SERVICE_NAME or f"dromos-{role}"
    resource = Resource.create({SERVICE_NAME: service, "dromos.role": role})
    exporter = _scrubbing_exporter(exporter or _configured_exporter(settings.OTEL_TRACES_EXPORTER or "otlp"))
    processor = SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    provider.redis = TracerProvider(resource=resource, sampler=ParentBased(root=ALWAYS_OFF), shutdown_on_exit=False)
    provider.redis.add_span_processor(processor)
    return provider


def instrument(provider, *, celery: bool = True) -> None:
    """Install every instrumentation with `provider` (idempotent; `uninstrument` undoes it)."""
    from django.conf import settings
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    instrumentors = [
        (DjangoInstrumentor(), {"excluded_urls": settings.OTEL_PYTHON_DJANGO_EXCLUDED_URLS}),
        (URLLib3Instrumentor(), {}),
        (RequestsInstrumentor(), {}),
        # Statements keep their %s placeholders; parameters are never captured (the default,
        # said here so it stays so), and no SQL comment is added to what PostgreSQL sees.
        (PsycopgInstrumentor(), {"capture_parameters": False, "enable_commenter": False}),
        (RedisInstrumentor(), {"provider": getattr(provider, "redis", provider)}),
    ]
    if celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        instrumentors.append((CeleryInstrumentor(), {}))
    for instrumentor, options in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            options = {"tracer_provider": options.pop("provider", provider), **options}
            instrumentor.instrument(**options)
        _installed[type(instrumentor).__name__] = instrumentor


def active() -> bool:
    """Whether this process traces (the gateway's lean broker client steps aside then: the
    urllib3 instrumentation carries the trace context over the internal hop)."""
    return bool(_installed)


def uninstrument() -> None:
    for instrumentor in _installed.values():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _installed.clear()


def setup(role: str) -> bool:
    """Turn tracing on for this process if the settings say so; True when it did."""
    from django.conf import settings

    if not settings.TRACING_ENABLED or _installed:
        return bool(_installed)
    from opentelemetry import trace

    provider = tracer_provider(role)
    trace.set_tracer_provider(provider)
    instrument(provider)
    return True
