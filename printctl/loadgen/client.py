"""Many WebSocket client connections on non-blocking sockets and one epoll loop per process.

The loop is the design that keeps the generator cheaper per message than the server it loads:
no task or coroutine per connection, no framework between `recv()` and the frame parser, and
messages built by bytes formatting. A connection counts as open once printd's `hello` arrived
(the instance it names is kept). Callbacks (`on_open`, `on_message`, `on_close`) run inline in
`poll()`; they must not block.

Other sockets can share the loop (`watch`): the load test's HTTP connections, and the control
pipe through which a coordinator process talks to its workers (one line per command).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from printctl.loadgen.frames import (
    DEFLATE_MIN,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    Deflate,
    close_code,
    encode_frame,
    parse_extensions,
    parse_frames,
    upgrade_request,
)
from printctl.loadgen.target import Target

RECV_SIZE = 262144
MAX_HTTP_HEAD = 65536
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP

# connection states, in order; SUBPROTOCOL is for a framing layer's own handshake after the 101
# (Socket.IO's, in the benchmark), `Conn.sub` its step
CONNECTING, HTTP, SUBPROTOCOL, HELLO, OPEN, CLOSED = range(6)


class Counters:
    """Bytes on the wire (what send()/recv() moved) and application payload (message bodies,
    uncompressed), each way, and messages."""

    __slots__ = ("wire_tx", "wire_rx", "app_tx", "app_rx", "msgs_tx", "msgs_rx")

    def __init__(self) -> None:
        self.wire_tx = self.wire_rx = self.app_tx = self.app_rx = self.msgs_tx = self.msgs_rx = 0

    def snapshot(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class Conn:
    __slots__ = (
        "sock",
        "fd",
        "state",
        "sub",
        "rbuf",
        "wbuf",
        "request",
        "deflate",
        "frag_b0",
        "frag",
        "t_start",
        "t_open",
        "kind",
        "index",
        "company",
        "pend",
        "count",
        "instance",
        "why",
        "code",
    )

    def __init__(
        self, sock: socket.socket, request: bytes, kind: str, index: int, company: int, count: Counters
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.sub = 0
        self.rbuf = bytearray()
        self.wbuf = b""
        self.request = request
        self.deflate: Deflate | None = None
        self.frag_b0 = 0
        self.frag: bytearray | None = None
        self.t_start = 0.0  # time.monotonic() at connect()
        self.t_open = 0.0  # time.monotonic() at hello
        self.kind = kind
        self.index = index
        self.company = company
        self.pend: deque[float] = deque()
        self.count = count
        self.instance = ""  # the printd instance named in hello
        self.why = ""  # why it closed, once CLOSED
        self.code: int | None = None  # the server's close code, if it sent one


def _ignore_conn(conn: Conn) -> None:
    pass


def _ignore_message(conn: Conn, payload: bytes) -> None:
    pass


class Client:
    """One epoll loop over many WebSocket client connections to one target."""

    def __init__(
        self, target: Target, *, deflate: bool = False, auth: str = "query", control: int | None = None
    ) -> None:
        self.target = target
        self.deflate = deflate
        self.auth = auth  # "query" (?token=) or "header" (Authorization: Bearer)
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.count = Counters()
        self.errors: dict[str, int] = {}
        self.on_message: Callable[[Conn, bytes], None] = _ignore_message
        self.on_open: Callable[[Conn], None] = _ignore_conn
        self.on_close: Callable[[Conn], None] = _ignore_conn
        self.deflate_accepted = 0
        self.control_lines: deque[str] = deque()
        self.control_eof = False  # the coordinator closed the control pipe: stop
        self._control_buf = b""
        if control is not None:
            os.set_blocking(control, False)
            self.watch(control, EPOLLIN, lambda _ev: self._read_control(control))

    # ---- requests
    def request_for(self, token: str) -> bytes:
        if self.auth == "header":
            return upgrade_request(
                self.target.host_header, self.target.path("/printing-ws"), bearer=token, deflate=self.deflate
            )
        target = self.target.path("/printing-ws") + f"?token={token}"
        return upgrade_request(self.target.host_header, target, deflate=self.deflate)

    # ---- other file descriptors in the loop
    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self.handlers[fd] = handler
        self.ep.register(fd, events)

    def unwatch(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # ---- connection life cycle
    def start(
        self,
        request: bytes,
        kind: str = "agent",
        index: int = 0,
        company: int = 0,
        count: Counters | None = None,
    ) -> Conn:
        sock = socket.socket(self.target.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock, request, kind, index, company, count or self.count)
        conn.t_start = time.monotonic()
        err = sock.connect_ex(self.target.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            conn.state = CLOSED
            conn.why = errno.errorcode.get(err, str(err))
            self.error(conn.why)
            return conn
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, EPOLLOUT)
        return conn

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def fail(self, conn: Conn, reason: str) -> None:
        """A connection that did not open (or was lost): count the reason, drop it."""
        if conn.state == CLOSED:
            return
        conn.why = ("lost " if conn.state == OPEN else "") + reason
        self.error(conn.why)
        self.close(conn)
        self.on_close(conn)

    def close(self, conn: Conn) -> None:
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        self.conns.pop(conn.fd, None)
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)

    # ---- I/O
    def send_raw(self, conn: Conn, data: bytes) -> None:
        if conn.state == CLOSED:
            return
        if conn.wbuf:
            conn.wbuf += data
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self.fail(conn, type(e).__name__)
            return
        conn.count.wire_tx += n
        if n < len(data):
            conn.wbuf = data[n:]
            self.ep.modify(conn.fd, EPOLLIN | EPOLLOUT)

    def send_message(self, conn: Conn, payload: bytes) -> None:
        conn.count.app_tx += len(payload)
        conn.count.msgs_tx += 1
        if conn.deflate is not None and len(payload) >= DEFLATE_MIN:
            self.send_raw(conn, encode_frame(conn.deflate.compress(payload), rsv1=True))
        else:
            self.send_raw(conn, encode_frame(payload))

    def _flush(self, conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.wbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(conn, type(e).__name__)
            return
        conn.count.wire_tx += n
        conn.wbuf = conn.wbuf[n:]
        if not conn.wbuf:
            self.ep.modify(conn.fd, EPOLLIN)

    def poll(self, timeout: float) -> None:
        conns = self.conns
        for fd, ev in self.ep.poll(max(0.0, timeout)):
            conn = conns.get(fd)
            if conn is None:
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(ev)
                continue
            if conn.state == CONNECTING:
                self._connected(conn)
                continue
            if ev & EPOLLOUT and conn.wbuf:
                self._flush(conn)
            if ev & (EPOLLIN | EPOLLHUP | EPOLLERR) and conn.state != CLOSED:
                self._read(conn)

    def _read_control(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.control_eof = True
            self.unwatch(fd)
            return
        self._control_buf += data
        while b"\n" in self._control_buf:
            line, _, self._control_buf = self._control_buf.partition(b"\n")
            self.control_lines.append(line.decode())

    def next_line(self, deadline: float) -> str | None:
        """Service the sockets until the next control line (None at EOF or the deadline, epoch s)."""
        while not self.control_lines and not self.control_eof and time.time() < deadline:
            self.poll(min(0.05, max(0.0, deadline - time.time())))
        return self.control_lines.popleft() if self.control_lines else None

    def _connected(self, conn: Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(conn, errno.errorcode.get(err, str(err)))
            return
        conn.state = HTTP
        self.ep.modify(conn.fd, EPOLLIN)
        self.send_raw(conn, conn.request)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(conn, type(e).__name__)
            return
        if not data:
            self.fail(conn, "closed by server" if conn.state >= HELLO else "closed in handshake")
            return
        conn.count.wire_rx += len(data)
        buf = conn.rbuf
        buf += data
        if conn.state == HTTP and not self._http_response(conn):
            return
        for b0, payload in parse_frames(buf):
            op = b0 & 0x0F
            if op >= OP_CLOSE:
                if op == OP_PING:
                    self.send_raw(conn, encode_frame(payload, OP_PONG))
                elif op == OP_CLOSE:
                    conn.code = close_code(payload)
                    self.fail(conn, f"close {conn.code if conn.code is not None else ''}".strip())
                    return
                continue
            if op == OP_CONT:
                if conn.frag is None:
                    continue
                conn.frag += payload
                if not b0 & 0x80:
                    continue
                b0, payload, conn.frag = conn.frag_b0, bytes(conn.frag), None
            elif not b0 & 0x80:
                conn.frag_b0, conn.frag = b0, bytearray(payload)
                continue
            if b0 & 0x40:
                if conn.deflate is None:
                    self.fail(conn, "RSV1 without deflate")
                    return
                payload = conn.deflate.inflate(payload)
            conn.count.app_rx += len(payload)
            conn.count.msgs_rx += 1
            if conn.state == OPEN:
                self._deliver(conn, payload)
            else:
                self._handshake_message(conn, payload)
            if conn.state == CLOSED:
                return

    def _http_response(self, conn: Conn) -> bool:
        buf = conn.rbuf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HTTP_HEAD:
                self.fail(conn, "oversized HTTP response")
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        status_line, _, headers = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            self.fail(conn, "http " + (parts[1] if len(parts) > 1 else status_line[:20]))
            return False
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                params = parse_extensions(value)
                if params is not None:
                    conn.deflate = Deflate(params)
                    self.deflate_accepted += 1
        self._upgraded(conn)
        return True

    # ---- hooks for another framing layer (the benchmark's Socket.IO) ----
    def _upgraded(self, conn: Conn) -> None:
        """The 101 arrived: printd's first message is `hello`."""
        conn.state = HELLO

    def _handshake_message(self, conn: Conn, payload: bytes) -> None:
        if conn.state != HELLO or b'"hello"' not in payload:
            return
        try:
            msg: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict) or msg.get("event") != "hello":
            return
        data = msg.get("data")
        instance = data.get("instance") if isinstance(data, dict) else None
        conn.instance = instance if isinstance(instance, str) else ""
        self._opened(conn)

    def _opened(self, conn: Conn) -> None:
        conn.state = OPEN
        conn.t_open = time.monotonic()
        self.on_open(conn)

    def _deliver(self, conn: Conn, payload: bytes) -> None:
        self.on_message(conn, payload)

    # ---- opening many connections at once
    def open_all(
        self, specs: list[tuple[bytes, str, int, int]], concurrency: int, timeout: float
    ) -> tuple[list[Conn], float]:
        """Open every (request, kind, index, company) with at most `concurrency` handshakes in
        flight; (open conns, seconds)."""
        opened: list[Conn] = []
        in_flight: dict[int, Conn] = {}
        todo = deque(specs)

        def done_open(conn: Conn) -> None:
            in_flight.pop(id(conn), None)
            opened.append(conn)

        def done_closed(conn: Conn) -> None:
            in_flight.pop(id(conn), None)

        self.on_open, self.on_close = done_open, done_closed
        t0 = time.monotonic()
        hard_end = t0 + timeout + len(specs) / 50.0
        next_sweep = t0 + 0.5
        while (todo or in_flight) and not self.control_eof:
            while todo and len(in_flight) < concurrency:
                conn = self.start(*todo.popleft())
                if conn.state != CLOSED:
                    in_flight[id(conn)] = conn
            self.poll(0.05)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 0.5
                for conn in [c for c in in_flight.values() if now - c.t_start > timeout]:
                    self.fail(conn, "handshake timeout")
            if now > hard_end:
                for conn in list(in_flight.values()):
                    self.fail(conn, "phase timeout")
                if todo:
                    self.error("not started (phase timeout)")
                break
        elapsed = time.monotonic() - t0
        self.on_open = self.on_close = _ignore_conn
        return [c for c in opened if c.state == OPEN], elapsed
