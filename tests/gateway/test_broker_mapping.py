"""Honest status mapping when the broker answers badly: 502, never a leaked HTML page."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


class _Broken(BaseHTTPRequestHandler):
    answers = {
        "/internal/v1/connections/c_html/token": (500, "text/html", b"<html>Traceback ...</html>"),
        "/internal/v1/connections/c_text/token": (200, "text/plain", b"ok"),
        "/internal/v1/connections/c_json5/token": (500, "application/json", b'{"detail": "boom"}'),
        "/internal/v1/connections/c_crash/token": (
            500,
            "application/json",
            b'{"error": "server_error", "message": "Internal server error."}',
        ),
    }

    def log_message(self, *args):
        pass

    def do_GET(self):
        status, content_type, body = self.answers.get(self.path.split("?")[0], (404, "text/plain", b"?"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def broken_broker(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("connection_id", ["c_html", "c_text", "c_json5", "c_crash"])
def test_bad_broker_answers_are_502(stack, settings, broken_broker, connection_id):
    from gateway_app import broker_client

    key = stack.key()
    settings.BROKER_INTERNAL_URL = broken_broker
    broker_client.reset()
    response = stack.call("GET", f"/v1/token/{connection_id}", key)
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"
    assert "Traceback" not in response.text


def test_broker_refusing_the_gateway_key_is_502_not_the_agents_401(stack, fake_provider_row):
    """A wrong BROKER_API_KEY is the operator's misconfiguration: the agent's key is fine."""
    from gateway_app import broker_client

    key = stack.key()
    broker_client.reset()
    client = broker_client.broker()
    client.pool.headers["X-API-Key"] = "not-the-broker-key"  # only the gateway's side is wrong
    try:
        response = stack.call("GET", "/v1/providers", key)
    finally:
        broker_client.reset()
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"
    assert "not-the-broker-key" not in response.text


def test_a_crash_is_a_json_500_on_the_broker_and_502_through_the_gateway(stack, monkeypatch):
    """An unexpected exception: the API's JSON error shape (never Django's HTML page, never
    the exception's text), and the gateway reports its upstream as bad."""
    from broker_app import apis

    def crash(**_):
        raise RuntimeError("boom: sk_live_do_not_show")

    monkeypatch.setattr(apis, "token_read", crash)
    key = stack.key()
    direct = stack.broker("GET", "/internal/v1/connections/c_any/token", headers={"X-Dromos-Workspace": "ws-a"})
    assert direct.status_code == 500
    assert direct.json() == {"error": "server_error", "message": "Internal server error."}
    through = stack.call("GET", "/v1/token/c_any", key)
    assert through.status_code == 502
    assert through.json()["error"] == "bad_gateway"
    assert "sk_live" not in direct.text + through.text
