"""A tiny local HTTP server that replays recorded provider answers and records every request.

The protocol client talks to it over real HTTP (no mocked `requests`): a test points a
resolved spec's endpoints at `replay.url(path)`, queues the provider's documented answer
with `replay.answer(method, path, status, body)`, makes the call, and reads back exactly
what the broker sent in `replay.requests`."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def fields(self) -> dict[str, Any]:
        """The body's fields, whichever encoding it used."""
        if not self.body:
            return {}
        return self.json if self.content_type == "application/json" else self.form


class Replay:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.answers: dict[tuple[str, str], deque[tuple[int, Any, str, dict[str, str]]]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> Replay:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.answers.clear()

    def answer(
        self,
        method: str,
        path: str,
        status: int,
        body: Any = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue one answer for the next `method path` request (FIFO; 404 when none left).
        A str body is sent as is; anything else as JSON (None as `null`, except with 204)."""
        with self.lock:
            self.answers.setdefault((method.upper(), path), deque()).append(
                (status, body, content_type, dict(headers or {}))
            )

    def only(self, method: str | None = None) -> Recorded:
        assert len(self.requests) == 1, [f"{r.method} {r.path}" for r in self.requests]
        request = self.requests[0]
        assert method is None or request.method == method
        return request

    def _handler(self):
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                recorded = Recorded(
                    method=self.command,
                    path=parts.path,
                    query=dict(parse_qsl(parts.query)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with replay.lock:
                    replay.requests.append(recorded)
                    queue = replay.answers.get((self.command, parts.path))
                    status, payload, content_type, headers = (
                        queue.popleft() if queue else (404, {"error": "not_found"}, "application/json", {})
                    )
                raw = (
                    b""
                    if payload is None and status == 204
                    else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                )
                self.send_response(status)
                if raw:
                    self.send_header("Content-Type", content_type)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _serve

        return Handler
