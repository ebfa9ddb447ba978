"""A small TCP proxy to cut a real dependency on purpose (the Toxiproxy idea).

It sits between printd and the shared PostgreSQL or Redis (or between an agent and printd) on a
loopback port. `down()` resets every open connection and refuses new ones (a dead server, as the
client sees it); `up()` lets traffic through again. `blackhole()` silently drops everything on
the connections open now, both ways, without a reset or a close (a NAT or firewall that forgot
the flow): neither end hears anything, and only a timeout can tell. New connections still pass.
Threads, not trio: it must keep working whatever the test's own event loop is doing.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._up = True
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._black: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up:
                self._reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if src in self._black:
                    if not data:
                        return  # even a FIN is swallowed: the other end keeps waiting
                    continue
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        if src in self._black:
            return
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _reset(s: socket.socket) -> None:
        """Close with RST, as a crashed host's kernel would."""
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def down(self) -> None:
        self._up = False
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            self._reset(s)

    def blackhole(self) -> None:
        """Drop every byte of the connections open now, both ways, silently and for good."""
        with self._lock:
            self._black |= self._conns

    def up(self) -> None:
        self._up = True

    def close(self) -> None:
        self._closed = True
        self.down()
        self._listener.close()
