"""The fault proxy against a real TCP server: cut and restored in a thread (only the connections
a match selects), and as the process `printctl cluster up --db-proxy` runs, driven by signals."""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from printctl.faults.proxy import TcpProxy, read_state
from tests.conftest import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):  # a cut resets it
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()


def talk(sock: socket.socket, data: bytes) -> bytes:
    """Send, then what comes back: b"" when the proxy closed or reset the connection."""
    try:
        sock.sendall(data)
        return sock.recv(65536)
    except OSError:
        return b""


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def talk_new(port: int, data: bytes) -> bytes:
    """`talk` on a new connection (a refused one may be reset before connect() returns)."""
    try:
        sock = connect(port)
    except OSError:
        return b""
    with sock:
        return talk(sock, data)


def ends(sock: socket.socket) -> bool:
    """The connection ends (reset or closed) within 3 s, once what was sent on it is read."""
    sock.settimeout(3)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def wait_state(path: Path, want: str | None) -> None:
    deadline = time.monotonic() + 10
    while read_state(path) != want:
        assert time.monotonic() < deadline, f"the proxy's state is {read_state(path)!r}, not {want!r}"
        time.sleep(0.02)


def test_a_cut_by_match_resets_only_the_connections_it_selects(echo: tuple[str, int]) -> None:
    proxy = TcpProxy(echo)
    websocket = lambda head: head.startswith(b"GET /printing-ws")  # noqa: E731
    try:
        ws, api = connect(proxy.port), connect(proxy.port)
        assert talk(ws, b"GET /printing-ws 1") == b"GET /printing-ws 1"
        assert talk(api, b"POST /api/v1/jobs 1") == b"POST /api/v1/jobs 1"
        proxy.down(websocket)
        assert talk(ws, b"more") == b""  # reset
        assert talk(api, b"POST /api/v1/jobs 2") == b"POST /api/v1/jobs 2"  # untouched
        assert talk_new(proxy.port, b"GET /printing-ws 2") == b""  # cut on its first bytes
        assert talk_new(proxy.port, b"GET /health") == b"GET /health"
        proxy.up()
        assert talk_new(proxy.port, b"GET /printing-ws 3") == b"GET /printing-ws 3"
    finally:
        proxy.close()


def test_a_client_waiting_for_an_answer_is_reset_at_the_cut() -> None:
    """printd waiting for PostgreSQL's answer when the database is cut must see the connection
    die at once (a dead server), not wait for an answer that never comes."""
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            held.append(silent.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    proxy = TcpProxy(silent.getsockname())
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
        sock.sendall(b"SELECT 1")
        deadline = time.monotonic() + 5
        while not held and time.monotonic() < deadline:  # the query reached the server
            time.sleep(0.01)
        proxy.down()
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
        assert ends(held[0])  # and the server's side too: a cut leaks no database connection
    finally:
        proxy.close()
        silent.close()


def test_an_idle_connection_stays_open_through_the_proxy(echo: tuple[str, int]) -> None:
    """A pooled database connection may sit idle for minutes: the proxy must not end it."""
    proxy = TcpProxy(echo)
    try:
        sock = connect(proxy.port)
        assert talk(sock, b"ping") == b"ping"
        time.sleep(6)  # longer than the 5 s the proxy gives itself to connect upstream
        assert talk(sock, b"still there") == b"still there"
    finally:
        proxy.close()


def test_the_proxy_process_is_cut_and_restored_by_signals(echo: tuple[str, int], tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "proxy.state"
    argv = [sys.executable, "-m", "printctl.faults.proxy", "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", f"{echo[0]}:{echo[1]}", "--state-file", str(state)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_state(state, "up")
        held = connect(port)
        assert talk(held, b"before") == b"before"
        proc.send_signal(signal.SIGUSR1)
        wait_state(state, "down")
        assert talk(held, b"during") == b""  # the open connection was reset
        assert talk_new(port, b"new") == b""  # and new ones are refused
        proc.send_signal(signal.SIGUSR2)
        wait_state(state, "up")
        assert talk_new(port, b"after") == b"after"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not state.exists()
        assert proc.stdout is not None
        log = proc.stdout.read().decode()
        assert f"127.0.0.1:{port} -> {echo[0]}:{echo[1]}: down" in log and log.rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
