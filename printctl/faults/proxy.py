"""A TCP proxy that cuts a real dependency on purpose (the Toxiproxy idea).

It sits on a loopback port between a client and its server: between printd and PostgreSQL
(`printctl cluster up --db-proxy`), between the load generator's agents and the front
(`printctl failover-test`'s agent cut), or wherever a test puts it.

- `down()` resets every open connection and refuses new ones (a dead server, as the client
  sees it); `down(match)` does that only to the connections whose first bytes from the client
  match (the agents' WebSocket upgrades, say) and lets the others pass. `up()` lets everything
  through again.
- `blackhole()` silently drops everything on the connections open now, both ways, without a
  reset or a close (a NAT or firewall that forgot the flow): neither end hears anything, and
  only a timeout can tell. New connections still pass.

Threads, not trio: it must keep working whatever the caller's own event loop is doing.

As a process of its own (`python -m printctl.faults.proxy --listen HOST:PORT --upstream
HOST:PORT --state-file FILE`): SIGUSR1 cuts (`down()`), SIGUSR2 restores (`up()`), SIGTERM or
SIGINT stops it. After each change it writes its state, `up` or `down`, to the state file, so
whoever sent the signal knows when the cut took effect.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

#: decides from the first bytes a client sent whether its connection is cut
Match = Callable[[bytes], bool]


def everything(head: bytes) -> bool:
    return True


class _Pair:
    """One proxied connection: the client's socket, the server's, and the client's first bytes."""

    __slots__ = ("client", "server", "head")

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.head: bytes | None = None


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, port))
        self.port: int = self._listener.getsockname()[1]
        self._cut: Match | None = None
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._black: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def is_up(self) -> bool:
        return self._cut is None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut is everything:
                self._reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._reset(client)
                continue
            server.settimeout(None)  # the 5 s were for connecting; an idle connection stays open
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.add(pair)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(pair, a, b), daemon=True).start()

    def _pipe(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        first = src is pair.client
        try:
            while True:
                data = src.recv(65536)
                if src in self._black:
                    if not data:
                        return  # even a FIN is swallowed: the other end keeps waiting
                    continue
                if not data:
                    break
                if first:
                    first = False
                    pair.head = data
                    cut = self._cut
                    if cut is not None and cut(data):
                        self._drop({pair})
                        return
                dst.sendall(data)
        except OSError:
            pass
        if src in self._black:
            return
        with self._lock:
            if pair not in self._pairs:
                return  # cut: `_drop` resets both sockets, and a shutdown here would send a FIN first
            self._pairs.discard(pair)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _reset(s: socket.socket) -> None:
        """Close with RST, as a crashed host's kernel would. A close alone does not do it while a
        pipe thread waits in recv() on the socket (the kernel keeps it open for that call, and a
        client waiting for an answer would wait forever): shutting its reading side down first
        wakes that thread, and the RST goes out when it lets go."""
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            s.close()

    def _drop(self, pairs: set[_Pair]) -> None:
        with self._lock:
            self._pairs -= pairs
        for pair in pairs:
            self._reset(pair.client)
            self._reset(pair.server)

    def down(self, match: Match | None = None) -> None:
        """Reset the connections `match` selects (all by default) and refuse new ones like them.
        A connection whose client has not spoken yet is judged on its first bytes."""
        cut = match or everything
        with self._lock:
            self._cut = cut
            victims = {p for p in self._pairs if match is None or (p.head is not None and cut(p.head))}
        self._drop(victims)

    def blackhole(self) -> None:
        """Drop every byte of the connections open now, both ways, silently and for good."""
        with self._lock:
            self._black |= {s for p in self._pairs for s in (p.client, p.server)}

    def up(self) -> None:
        self._cut = None

    def close(self) -> None:
        self._closed = True
        self.down()
        self._listener.close()


# ------------------------------------------------------------------------ as a process


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); ValueError names what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def write_state(path: Path, state: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(state + "\n")
    os.replace(tmp, path)


def read_state(path: Path) -> str | None:
    """`up`, `down`, or None when the proxy has not started (or has stopped)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m printctl.faults.proxy", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    parser.add_argument("--state-file", required=True, type=Path, help="where `up` or `down` is written")
    args = parser.parse_args(argv)
    try:
        listen, upstream = parse_address(args.listen), parse_address(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    signals = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # before any thread: only sigwait sees them
    proxy = TcpProxy(upstream, host=listen[0], port=listen[1])
    where = f"{listen[0]}:{proxy.port} -> {upstream[0]}:{upstream[1]}"
    write_state(args.state_file, "up")
    print(f"proxy {where}: up", flush=True)
    while True:
        received = signal.sigwait(signals)
        if received == signal.SIGUSR1:
            proxy.down()
            state = "down"
        elif received == signal.SIGUSR2:
            proxy.up()
            state = "up"
        else:
            proxy.close()
            args.state_file.unlink(missing_ok=True)
            print(f"proxy {where}: stopped", flush=True)
            return
        write_state(args.state_file, state)
        print(f"proxy {where}: {state}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
