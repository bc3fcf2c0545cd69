"""A TCP relay a test can cut: processes under test reach PostgreSQL or Redis through it, so
an outage is real (connections cut mid-stream, new ones refused) without stopping the
servers other tests share."""

from __future__ import annotations

import socket
import threading


class Relay:
    """127.0.0.1:<port> → the target server. `cut()` closes every relayed connection and refuses new
    ones (accepted, then closed at once, as a restarting server does); `restore()` relays again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self.hanging = False
        self.held: list[socket.socket] = []
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                if self.hanging:
                    with self.lock:
                        self.held.append(client)
                else:
                    client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            doomed, self.sockets = self.sockets, set()
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def hang(self) -> None:
        """A server that stopped answering: relayed connections are cut, new ones are accepted
        and then never answered (clients wait for their own timeouts)."""
        self.hanging = True
        self.cut()

    def restore(self) -> None:
        self.up = True
        self.hanging = False
        with self.lock:
            held, self.held = self.held, []
        for sock in held:
            sock.close()

    def close(self) -> None:
        self.restore()
        self.cut()
        self.listener.close()
