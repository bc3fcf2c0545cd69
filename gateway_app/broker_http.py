"""A minimal HTTP/1.1 keep-alive client for the gateway's GET calls to the broker (issue 20).

The gateway makes one kind of call to one host it knows. urllib3 (and http.client under it)
builds each request header by header and parses each answer's headers with the `email`
package: about half of the gateway's CPU for a token fetch. Here a request is one
preformatted write and an answer is parsed for the four headers the gateway reads
(Content-Length, Transfer-Encoding, Connection, Content-Type, Retry-After); every framing
HTTP/1.1 allows is read (Content-Length, chunked, until close). Plain http only: an https
BROKER_INTERNAL_URL keeps urllib3 (gateway_app.broker_client).

Connections are kept per thread (a gateway worker thread makes one call at a time), at most
one idle connection per thread; one the broker closed while idle is noticed before it is
reused (as urllib3 does) and replaced. Errors are urllib3's, so the caller maps them as
before: a failed connect → ConnectTimeoutError (the broker unreachable), a read timeout →
ReadTimeoutError, a reset or an answer cut short → ProtocolError.
"""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass

from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names: the ones the gateway reads
    data: bytes


class _Closed(Exception):
    """The peer closed the connection before any byte of the answer: a stale keep-alive."""


class LeanHTTP:
    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float, headers: dict) -> None:
        self.host, self.port = host, port
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.host_header = host if port == 80 else f"{host}:{port}"
        self.headers = headers  # the caller's dict (BrokerClient's pool headers): changes to it apply
        self._fixed: tuple[tuple, str] = ((), "")
        self.local = threading.local()

    def _fixed_lines(self) -> str:
        items = tuple(self.headers.items())
        if self._fixed[0] != items:
            lines = "".join(
                f"{name}: {value}\r\n" for name, value in {"Host": self.host_header, **self.headers}.items()
            )
            self._fixed = (items, lines)
        return self._fixed[1]

    def close(self) -> None:
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            conn.close()

    def _connect(self) -> socket.socket:
        try:
            conn = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:  # refused, unreachable, timed out: the broker is not there
            raise ConnectTimeoutError(None, f"connect to the broker failed: {type(exc).__name__}") from None
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.read_timeout)
        return conn

    def _idle_connection(self) -> socket.socket | None:
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is None:
            return None
        # Readable while idle means closed by the broker (or garbage): not reusable.
        if select.select([conn], [], [], 0)[0]:
            conn.close()
            return None
        return conn

    def request(self, method: str, target: str, headers: dict[str, str]) -> Answer:
        head = (
            f"{method} {target} HTTP/1.1\r\n{self._fixed_lines()}"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        ).encode("latin-1")
        conn = self._idle_connection()
        if conn is not None:
            try:
                return self._exchange(conn, head)
            except _Closed:
                pass  # closed between the check and the write: nothing was processed; a new connection
        return self._exchange(self._connect(), head, fresh=True)

    def _exchange(self, conn: socket.socket, head: bytes, *, fresh: bool = False) -> Answer:
        try:
            conn.sendall(head)
            answer, reusable = _read_answer(conn)
        except _Closed:
            conn.close()
            if fresh:
                raise ProtocolError("the broker closed the connection without answering") from None
            raise
        except TimeoutError:
            conn.close()
            raise ReadTimeoutError(None, None, "the broker did not answer in time") from None
        except OSError as exc:
            conn.close()
            if not fresh and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                raise _Closed from None
            raise ProtocolError(f"connection to the broker failed: {type(exc).__name__}") from None
        except ProtocolError:
            conn.close()
            raise
        if reusable:
            old = getattr(self.local, "conn", None)
            if old is not None:
                old.close()
            self.local.conn = conn
        else:
            conn.close()
        return answer


def _read_answer(conn: socket.socket) -> tuple[Answer, bool]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            if not buffer:
                raise _Closed
            raise ProtocolError("the broker's answer ended inside its headers")
        buffer += chunk
        if len(buffer) > _MAX_HEADER_BYTES:
            raise ProtocolError("the broker's answer headers are too large")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError("the broker's answer is not HTTP/1.x")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError("malformed header line in the broker's answer")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    keep_alive = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, rest = _read_chunked(conn, rest)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError("malformed Content-Length in the broker's answer") from None
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise ProtocolError("the broker's answer is too large")
        body = rest
        while len(body) < length:
            chunk = conn.recv(min(65536, length - len(body)))
            if not chunk:
                raise ProtocolError("the broker's answer ended early")
            body += chunk
        rest, body = body[length:], body[:length]
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:  # delimited by the end of the connection
        pieces = [rest]
        while chunk := conn.recv(65536):
            pieces.append(chunk)
        body, rest, keep_alive = b"".join(pieces), b"", False
    return Answer(status, headers, body), keep_alive and not rest


def _read_chunked(conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    body = []

    def line() -> bytes:
        nonlocal buffer
        while b"\r\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                raise ProtocolError("the broker's chunked answer ended early")
            buffer += chunk
        text, _, buffer = buffer.partition(b"\r\n")
        return text

    def exactly(size: int) -> bytes:
        nonlocal buffer
        while len(buffer) < size:
            chunk = conn.recv(65536)
            if not chunk:
                raise ProtocolError("the broker's chunked answer ended early")
            buffer += chunk
        data, buffer = buffer[:size], buffer[size:]
        return data

    total = 0
    while True:
        try:
            size = int(line().split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError("malformed chunk size in the broker's answer") from None
        if size == 0:
            while line():  # trailers, up to the empty line
                pass
            return b"".join(body), buffer
        total += size
        if total > _MAX_BODY_BYTES:
            raise ProtocolError("the broker's answer is too large")
        body.append(exactly(size))
        if exactly(2) != b"\r\n":
            raise ProtocolError("malformed chunk in the broker's answer")
