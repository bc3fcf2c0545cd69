"""The gateway's lean keep-alive client for GETs to the broker (gateway_app/broker_http.py):
every HTTP/1.1 framing read, connections reused, a connection the broker closed while idle
replaced, failures mapped to the errors urllib3 raised before (so broker_client maps them to
the same 503/502 answers)."""

from __future__ import annotations

import socket
import threading

import pytest
from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError

from gateway_app.broker_http import LeanHTTP


class RawServer:
    """Answers each request on a connection with the next canned raw answer; counts connections."""

    def __init__(self, answers: list[bytes], *, close_after: int | None = None, delay: float = 0) -> None:
        self.answers, self.close_after, self.delay = answers, close_after, delay
        self.connections = 0
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        served = 0
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                request, _, buffer = buffer.partition(b"\r\n\r\n")
                self.requests.append(request)
                if self.delay:
                    threading.Event().wait(self.delay)
                answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
                conn.sendall(answer)
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    return

    def client(self, read_timeout: float = 5) -> LeanHTTP:
        return LeanHTTP(
            "127.0.0.1", self.port, connect_timeout=2, read_timeout=read_timeout, headers={"X-API-Key": "k"}
        )

    def close(self) -> None:
        self.sock.close()


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": true}'


def test_content_length_answers_reuse_one_connection():
    server = RawServer([OK])
    client = server.client()
    for _ in range(3):
        answer = client.request("GET", "/x?y=1", {"X-Request-ID": "r1"})
        assert (answer.status, answer.data, answer.headers["content-type"]) == (200, b'{"a": true}', "application/json")
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /x?y=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in first and "X-API-Key: k" in first and "X-Request-ID: r1" in first


def test_chunked_and_close_delimited_answers():
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 2\r\n"
        b'Content-Type: application/json\r\n\r\n4\r\n{"a"\r\n7;ext=1\r\n: true}\r\n0\r\n\r\n'
    )
    server = RawServer([chunked])
    answer = server.client().request("GET", "/x", {})
    assert (answer.status, answer.data, answer.headers["retry-after"]) == (503, b'{"a": true}', "2")

    close = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"b": 1}'
    server = RawServer([close], close_after=1)
    client = server.client()
    assert client.request("GET", "/x", {}).data == b'{"b": 1}'
    assert client.request("GET", "/x", {}).data == b'{"b": 1}'
    assert server.connections == 2  # not reused: the answer ended with the connection


def test_a_connection_the_broker_closed_while_idle_is_replaced():
    server = RawServer([OK], close_after=1)  # like a keep-alive timeout after each answer
    client = server.client()
    for _ in range(3):
        assert client.request("GET", "/x", {}).status == 200
    assert server.connections == 3


def test_connect_failure_read_timeout_and_a_cut_answer_raise_urllib3s_errors():
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    with pytest.raises(ConnectTimeoutError):
        LeanHTTP("127.0.0.1", port, connect_timeout=1, read_timeout=1, headers={}).request("GET", "/", {})

    slow = RawServer([OK], delay=1.5)
    with pytest.raises(ReadTimeoutError):
        slow.client(read_timeout=0.3).request("GET", "/", {})

    cut = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"], close_after=1)
    with pytest.raises(ProtocolError):
        cut.client().request("GET", "/", {})

    garbage = RawServer([b"SSH-2.0-OpenSSH\r\n\r\n"], close_after=1)
    with pytest.raises(ProtocolError):
        garbage.client().request("GET", "/", {})


def test_the_gateway_maps_an_unreachable_broker_to_503(stack, settings):
    from gateway_app import broker_client

    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    key = stack.key()
    settings.BROKER_INTERNAL_URL = f"http://127.0.0.1:{port}"
    broker_client.reset()
    assert broker_client.broker().lean is not None
    response = stack.call("GET", "/v1/token/c_abc", key)
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    assert response.headers["Retry-After"] == "2"


@pytest.mark.parametrize(
    "url, lean, expected",
    [("http://broker:8001", True, True), ("https://broker", True, False), ("http://b", False, False)],
)
def test_the_lean_client_is_for_plain_http_and_can_be_turned_off(settings, url, lean, expected):
    from gateway_app import broker_client

    settings.BROKER_INTERNAL_URL, settings.BROKER_LEAN_CLIENT = url, lean
    broker_client.reset()
    try:
        assert (broker_client.broker().lean is not None) is expected
    finally:
        broker_client.reset()
