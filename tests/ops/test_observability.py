"""Metrics, health probes and the request id, on the real processes (gunicorn through
docker/entrypoint.sh, Prometheus multiprocess mode, JSON logs)."""

from __future__ import annotations

import requests

from tests.ops.conftest import free_port, http_status, metric_value, random_id, start_role, stop_process, wait_for

TOKEN_ROUTE = "/v1/token/<str:connection_id>"
BROKER_TOKEN_OPERATION = "GET /internal/v1/connections/{id}/token"


def scrape(url: str, **headers: str) -> str:
    response = requests.get(url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")  # Prometheus text format
    return response.text


# -- metrics ------------------------------------------------------------------------------------------


def test_gateway_metrics_after_traffic(ops_stack):
    key = ops_stack.new_key(random_id("ws-metrics"))
    cid = ops_stack.connect(key)
    before = scrape(ops_stack.gateway_url, **ops_stack.ops_headers())
    for _ in range(3):
        assert ops_stack.gw("GET", f"/v1/token/{cid}", key).status_code == 200
    assert ops_stack.gw("GET", "/v1/token/c_unknown", key).status_code == 404
    assert ops_stack.gw("GET", f"/v1/check-connection/{cid}", key).status_code == 200
    after = scrape(ops_stack.gateway_url, **ops_stack.ops_headers())

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    # Request latency per endpoint (route template, never the raw path with an id), summed over
    # both gunicorn workers.
    assert delta("dromos_http_request_duration_seconds_count", route=TOKEN_ROUTE, method="GET", status="200") == 3
    assert delta("dromos_http_request_duration_seconds_count", route=TOKEN_ROUTE, method="GET", status="404") == 1
    assert (
        delta(
            "dromos_http_request_duration_seconds_count",
            route="/v1/check-connection/<str:connection_id>",
            method="GET",
            status="200",
        )
        == 1
    )
    assert (
        delta("dromos_http_request_duration_seconds_bucket", route=TOKEN_ROUTE, method="GET", status="200", le="+Inf")
        == 3
    )
    assert delta("dromos_http_request_duration_seconds_sum", route=TOKEN_ROUTE, method="GET", status="200") > 0
    assert cid not in after
    # Token fetches by outcome, and the broker calls' latency seen from the gateway.
    assert delta("dromos_gateway_token_fetches_total", outcome="200") == 3
    assert delta("dromos_gateway_token_fetches_total", outcome="404") == 1
    assert delta("dromos_gateway_broker_call_seconds_count", operation=BROKER_TOKEN_OPERATION, outcome="200") == 3
    assert (
        delta("dromos_gateway_broker_call_seconds_bucket", operation=BROKER_TOKEN_OPERATION, outcome="200", le="+Inf")
        == 3
    )
    assert (
        delta("dromos_gateway_broker_call_seconds_count", operation="GET /internal/v1/connections/{id}", outcome="200")
        == 1
    )


def test_broker_metrics_after_traffic(ops_stack):
    broker_key = {"X-API-Key": ops_stack.env["BROKER_API_KEY"]}
    assert requests.get(ops_stack.broker_url + "/metrics", timeout=10).status_code == 401  # private, like the API
    key = ops_stack.new_key(random_id("ws-metrics"))
    before = scrape(ops_stack.broker_url, **broker_key)
    cid = ops_stack.connect(key)
    assert ops_stack.gw("GET", f"/v1/token/{cid}", key).status_code == 200
    assert ops_stack.gw("POST", f"/v1/refresh/{cid}", key).status_code == 200
    middle = scrape(ops_stack.broker_url, **broker_key)
    assert ops_stack.gw("DELETE", f"/v1/connections/{cid}", key).status_code == 200
    after = scrape(ops_stack.broker_url, **broker_key)

    def delta(text, name, **labels):
        return metric_value(text, name, **labels) - metric_value(before, name, **labels)

    # Refresh outcomes per provider (shared by every broker process and Celery worker).
    assert delta(middle, "dromos_refresh_total", provider="local", outcome="success") == 1
    # Connections by status, counted at scrape time.
    assert delta(middle, "dromos_connections", provider="local", status="active") == 1
    assert delta(after, "dromos_connections", provider="local", status="active") == 0
    assert delta(after, "dromos_connections", provider="local", status="revoked") == 1
    assert delta(after, "dromos_connections_activated_total", provider="local") == 1
    assert delta(after, "dromos_connections_revoked_total", provider="local") == 1
    assert delta(after, "dromos_token_reads_total", provider="local") >= 1
    assert delta(after, "dromos_refresh_seconds_count", provider="local") >= 1
    assert (
        delta(
            after,
            "dromos_http_request_duration_seconds_count",
            route="/internal/v1/connections/<str:connection_id>/token",
            method="GET",
            status="200",
        )
        == 1
    )


# -- health probes ------------------------------------------------------------------------------------


def test_healthz_and_readyz_on_both_processes(ops_stack):
    for url in (ops_stack.gateway_url, ops_stack.broker_url):
        alive = requests.get(url + "/healthz", timeout=10)
        assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    ready = requests.get(ops_stack.gateway_url + "/readyz", headers=ops_stack.ops_headers(), timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"database": True, "redis": True, "broker": True}}
    assert ready.headers["Cache-Control"] == "no-store"
    broker = ops_stack.broker_get("/readyz")
    assert broker.status_code == 200 and broker.json()["checks"] == {"database": True, "redis": True}


def test_gateway_readyz_fails_while_its_broker_is_down(ops_stack, tmp_path):
    """A second broker and a gateway bound to it (the stack's database and Redis): the
    gateway is ready while the broker answers, 503 once it is gone, and ready again when a
    broker is back; /healthz stays 200 throughout (restart nothing, route no traffic)."""
    broker_port, gateway_port = free_port(), free_port()
    broker_env = {**ops_stack.env, "BASE_URL": f"http://127.0.0.1:{broker_port}"}
    gateway_env = {**ops_stack.env, "BROKER_INTERNAL_URL": f"http://127.0.0.1:{broker_port}"}
    gateway_env.pop("TOKEN_ENCRYPTION_KEYS", None)
    broker = start_role("broker", broker_env, tmp_path, broker_port)
    gateway = start_role("gateway", gateway_env, tmp_path, gateway_port)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    try:
        wait_for(lambda: http_status(gateway_url + "/readyz", **ops_stack.ops_headers()) == 200, "gateway ready", 60)
        stop_process(broker)
        down = requests.get(gateway_url + "/readyz", headers=ops_stack.ops_headers(), timeout=10)
        assert down.status_code == 503
        assert down.json() == {"status": "unavailable", "checks": {"database": True, "redis": True, "broker": False}}
        assert requests.get(gateway_url + "/healthz", timeout=10).status_code == 200
        # Agents get an honest 503 with Retry-After, not a hang or a 500.
        answer = requests.get(
            gateway_url + "/v1/providers", headers={"Authorization": f"Bearer {ops_stack.api_key}"}, timeout=10
        )
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
        assert answer.json()["error"] == "broker_unavailable"
        metrics = requests.get(gateway_url + "/metrics", headers=ops_stack.ops_headers(), timeout=10).text
        assert (
            metric_value(
                metrics,
                "dromos_gateway_broker_call_seconds_count",
                operation="GET /internal/v1/providers",
                outcome="unreachable",
            )
            == 1
        )
        broker = start_role("broker", broker_env, tmp_path, broker_port)
        wait_for(
            lambda: http_status(gateway_url + "/readyz", **ops_stack.ops_headers()) == 200, "gateway ready again", 60
        )
    finally:
        stop_process(gateway)
        stop_process(broker)


# -- request id ---------------------------------------------------------------------------------------


def test_request_id_is_carried_from_gateway_to_broker_logs(ops_stack):
    key = ops_stack.new_key(random_id("ws-trace"))
    cid = ops_stack.connect(key)
    request_id = random_id("trace")
    response = ops_stack.gw("GET", f"/v1/check-connection/{cid}", key, headers={"X-Request-ID": request_id})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == request_id

    def lines(name):
        return [line for line in ops_stack.json_log(name) if line.get("request_id") == request_id]

    broker_lines = wait_for(lambda: lines("broker"), "the broker's log lines for the request id")
    assert any(
        line["logger"] == "dromos.request"
        and line["path"] == f"/internal/v1/connections/{cid}"
        and line["status"] == 200
        for line in broker_lines
    ), broker_lines
    gateway_lines = wait_for(lambda: lines("gateway"), "the gateway's log lines for the request id")
    assert any(
        line["logger"] == "dromos.request" and line["path"] == f"/v1/check-connection/{cid}" for line in gateway_lines
    ), gateway_lines
    assert key not in ops_stack.log("gateway") and key not in ops_stack.log("broker")


def test_a_request_id_is_made_up_when_missing_or_unsafe_and_still_followed(ops_stack):
    key = ops_stack.new_key(random_id("ws-trace"))
    made_up = []
    for headers in ({}, {"X-Request-ID": "bad id with spaces"}, {"X-Request-ID": "x" * 200}):
        response = ops_stack.gw("GET", "/v1/providers", key, headers=headers)
        request_id = response.headers["X-Request-ID"]
        assert request_id not in (headers.get("X-Request-ID"), "-") and len(request_id) == 16
        made_up.append(request_id)
    for request_id in made_up:
        wait_for(
            lambda request_id=request_id: any(
                line.get("request_id") == request_id and line.get("path") == "/internal/v1/providers"
                for line in ops_stack.json_log("broker")
            ),
            f"broker line for {request_id}",
        )
