"""devtools/render_dashboards.py, the parts that run without Prometheus: its OTLP/HTTP receiver
takes what the real OTLP exporter sends (through dromos/tracing.py's scrubbing), keeps each
span's parent, and the waterfall is drawn from it; legends and span labels read as intended.
(The whole script, with a stack and Prometheus, is run by hand: docs/operations.md.)"""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind
from render_dashboards import SpanStore, legend, render_trace, span_label, start_otlp_receiver

from dromos import tracing


@pytest.fixture
def receiver():
    store = SpanStore()
    server, port = start_otlp_receiver(store)
    yield store, port
    server.shutdown()


def test_spans_exported_over_otlp_arrive_whole_and_scrubbed(receiver, tmp_path):
    store, port = receiver
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
    provider = tracing.tracer_provider("gateway", exporter, simple=True)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET v1/token/<str:connection_id>", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.url", "http://gw/v1/token/c_1?auto_refresh=true&code=not-for-a-span")
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as hop:
            hop.set_attribute("http.url", "http://broker/internal/v1/connections/c_1/token")
            hop.set_attribute("http.status_code", 200)
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as query:
            query.set_attribute("db.system", "postgresql")
            query.set_attribute("db.statement", 'SELECT "id" FROM "broker_app_connection" WHERE "id" = %s')
    provider.force_flush()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    spans = store.trace(trace_id)
    assert sorted(span["name"] for span in spans) == ["GET", "GET v1/token/<str:connection_id>", "SELECT"]
    by_name = {span["name"]: span for span in spans}
    root_id = by_name["GET v1/token/<str:connection_id>"]["span_id"]
    assert by_name["GET"]["parent_id"] == by_name["SELECT"]["parent_id"] == root_id
    assert {span["service"] for span in spans} == {"dromos-gateway"}
    assert by_name["GET v1/token/<str:connection_id>"]["attributes"]["http.url"] == "http://gw/v1/token/c_1"
    assert span_label(by_name["GET"]) == "→ broker: GET /internal/v1/connections/c_1/token (200)"
    assert span_label(by_name["SELECT"]) == "PostgreSQL SELECT broker_app_connection"

    path = tmp_path / "trace.png"
    render_trace(spans, path)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000


def test_legend_fills_grafana_templates():
    assert legend("{{provider}} {{outcome}}", {"provider": "google", "outcome": "success"}) == "google success"
    assert legend("within {{ within_days }} days", {"within_days": "7"}) == "within 7 days"
    assert legend("", {}) == "value"
