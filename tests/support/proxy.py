"""A TCP proxy between a client and the server under test, to slow or cut the client's connection.

Real sockets on loopback: every connection the client opens to the proxy gets its own connection to
the upstream server, and two threads pump bytes each way. The proxy counts the bytes it forwards
from clients to the server, can hold that direction to a rate (a slow uplink), and can cut, once,
the connection carrying the client's byte number N (both sockets closed, as when a network drops).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

BUFFER = 64 * 1024


@dataclass
class TcpProxy:
    upstream_port: int
    rate: float | None = None  # client -> server bytes per second; None: as fast as it goes
    cut_after: int | None = None  # cut the connection carrying this client -> server byte, once
    sent: int = 0  # client -> server bytes forwarded, over all connections
    cuts: int = 0
    port: int = 0
    _listener: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sockets: list[socket.socket] = field(default_factory=list)
    _closing: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for each in self._sockets:
                _close(each)

    def drop_connections(self) -> None:
        """Close every open connection (what was in flight is lost, as with a machine that died)
        and count from zero again."""
        with self._lock:
            for each in self._sockets:
                _close(each)
            self._sockets.clear()
            self.sent = 0

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets += [client, server]
            pair = (client, server)
            threading.Thread(target=self._pump_up, args=pair, name="proxy-up", daemon=True).start()
            threading.Thread(target=_pump_down, args=pair, name="proxy-down", daemon=True).start()

    def _pump_up(self, client: socket.socket, server: socket.socket) -> None:
        """Client -> server, counted, at `rate`, cut once at byte `cut_after`."""
        started = time.monotonic()
        forwarded = 0
        try:
            while data := client.recv(BUFFER if self.rate is None else min(BUFFER, max(1024, int(self.rate / 20)))):
                with self._lock:
                    if client not in self._sockets:
                        break  # dropped: these bytes were still in flight
                    if self.cut_after is not None and self.cuts == 0 and self.sent + len(data) > self.cut_after:
                        keep = self.cut_after - self.sent
                        server.sendall(data[:keep])
                        self.sent += keep
                        self.cuts += 1
                        self._sockets.remove(client)
                        break
                    self.sent += len(data)
                server.sendall(data)
                forwarded += len(data)
                if self.rate is not None:
                    ahead = forwarded / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)  # sync-ok: holding the uplink to its rate is the point
        except OSError:
            pass
        _close(client)
        _close(server)


def _pump_down(client: socket.socket, server: socket.socket) -> None:
    try:
        while data := server.recv(BUFFER):
            client.sendall(data)
    except OSError:
        pass
    _close(client)
    _close(server)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
