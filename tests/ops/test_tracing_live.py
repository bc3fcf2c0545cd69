"""OpenTelemetry with real processes: gunicorn gateway and broker, a Celery worker and the npm
OIDC provider, turned on by the standard variables only (OTEL_TRACES_EXPORTER=otlp and an
endpoint), exporting over OTLP/HTTP to a receiver in the test (devtools/render_dashboards.py's).

One token fetch with auto_refresh is one trace: the agent's traceparent → the gateway → the
broker (through the traceparent the gateway sent) → PostgreSQL and the provider's token
endpoint; a consent's webhook delivery runs in the worker inside the callback's trace; no
span holds the API key, the broker key or a token."""

from __future__ import annotations

import secrets
import time

import pytest
import redis
import requests
from render_dashboards import Agent, SpanStore, start_otlp_receiver, start_webhook_receiver
from stack import Stack, reset_postgres_database

from tests.ops.conftest import sibling_database

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory):
    from django.conf import settings

    store = SpanStore()
    receiver, port = start_otlp_receiver(store)
    hooks, hook_port = start_webhook_receiver({"failing": False})
    database_url = sibling_database("tracing")
    reset_postgres_database(database_url)
    # A Redis database of its own (the test database's number minus 2: 15 → 13, 14 → 12): the
    # suite's per-test cache flush of the worker's own database would also drop Celery's queue
    # bindings there, and the broker's webhook task would then be published to no queue.
    head, number = settings.REDIS_URL.rsplit("/", 1)
    redis_url = f"{head}/{(int(number) - 2) % 16}"
    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(
        workdir=tmp_path_factory.mktemp("tracing-stack"),
        database_url=database_url,
        redis_url=redis_url,
        beat=False,
        gateway_workers=1,
        broker_workers=1,
        extra_env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "WEBHOOK_ALLOW_HTTP_HOSTS": "127.0.0.1",
        },
    )
    stack.start()
    try:
        stack.manage("broker", "webhook", "add", "--workspace", "demo", "--url", f"http://127.0.0.1:{hook_port}/h")
        yield stack, store
    finally:
        stack.stop()
        receiver.shutdown()
        hooks.shutdown()


def _wait(store: SpanStore, trace_id: str, done, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = store.trace(trace_id)
        if done(spans):
            time.sleep(1)  # the rest of the batch
            return store.trace(trace_id)
        time.sleep(0.3)
    raise AssertionError([(s["service"], s["name"]) for s in store.trace(trace_id)])


def test_a_token_fetch_is_one_trace_across_the_processes(traced_stack):
    stack, store = traced_stack
    agent = Agent(stack)
    cid = agent.connect("local", "tracy@example.com")
    time.sleep(6)  # past the refresh coalescing window since the consent's tokens
    trace_id, agent_span = secrets.token_hex(16), secrets.token_hex(8)
    answer = requests.get(
        f"{stack.gateway_url}/v1/token/{cid}?auto_refresh=true&min_ttl=7200",
        headers={"Authorization": f"Bearer {stack.api_key}", "traceparent": f"00-{trace_id}-{agent_span}-01"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    access_token = answer.json()["access_token"]

    def to_provider(span):  # the broker's HTTP client call (the gateway's to the broker is the other)
        return span["service"] == "dromos-broker" and span["kind"] == 3 and "http.url" in span["attributes"]

    spans = _wait(store, trace_id, lambda found: any(to_provider(span) for span in found))
    by_id = {span["span_id"]: span for span in spans}

    def ancestors(span):
        chain = []
        while span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
            chain.append(span)
        return chain

    (gateway,) = [s for s in spans if s["name"] == "GET v1/token/<str:connection_id>"]
    assert gateway["service"] == "dromos-gateway" and gateway["parent_id"] == agent_span
    (broker,) = [s for s in spans if s["name"] == "GET internal/v1/connections/<str:connection_id>/token"]
    assert broker["service"] == "dromos-broker"
    hop = by_id[broker["parent_id"]]
    assert hop["service"] == "dromos-gateway" and hop["parent_id"] == gateway["span_id"]
    (provider,) = [s for s in spans if to_provider(s)]
    assert provider["name"] == "POST" and provider["attributes"]["http.url"].startswith(stack.oidc.issuer)
    assert broker in ancestors(provider)
    database = [s for s in spans if s["attributes"].get("db.system") == "postgresql"]
    assert {s["service"] for s in database} == {"dromos-gateway", "dromos-broker"}
    assert all(gateway in ancestors(s) for s in database)

    secrets_seen = {
        "API key": stack.api_key,
        "access token": access_token,
        "BROKER_API_KEY": stack.env["BROKER_API_KEY"],
    }
    for span in store.spans:
        text = repr(span)
        assert not [name for name, value in secrets_seen.items() if value in text], span["name"]


def test_a_webhook_task_runs_in_the_callbacks_trace(traced_stack):
    stack, store = traced_stack

    def delivered():
        return [s for s in store.spans if s["service"] == "dromos-worker" and s["name"].startswith("run/")]

    deadline = time.monotonic() + 30
    while not delivered() and time.monotonic() < deadline:
        time.sleep(0.5)
    runs = delivered()
    assert runs, "no task ran in the worker under a trace"
    trace = store.trace(runs[0]["trace_id"])
    names = {(s["service"], s["name"]) for s in trace}
    assert ("dromos-broker", "GET auth/callback") in names, names
    assert runs[0]["name"] == "run/broker_app.tasks.deliver_webhook"
    # The worker's own polling of Redis is not traced: every worker span is inside a task.
    worker = [s for s in store.spans if s["service"] == "dromos-worker"]
    assert all(s["parent_id"] for s in worker), [s["name"] for s in worker if not s["parent_id"]]
