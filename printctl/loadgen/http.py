"""Keep-alive HTTP/1.1 requests in the load generator's epoll loop: the back office's side.

A pool of at most `size` connections to the target; requests beyond that wait in order for a
free one, so an open-loop load that outruns printd shows up as latency (measured from when the
request was due), not as an unbounded number of sockets. Each request has a deadline; one that
passes it closes its connection and is reported as a "timeout", like a POS giving up on an
answer. `parse_response` is the pure part: bytes in, one answer out.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from printctl.loadgen.client import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, RECV_SIZE, Client, Counters

MAX_HEAD = 65536
MAX_BODY = 8 * 2**20


class HttpFramingError(Exception):
    """An answer this client cannot read (the connection is closed and the request failed)."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after", "")
        try:
            return max(0.0, float(value)) if value else None
        except ValueError:
            return None


def parse_response(buf: bytearray) -> HttpAnswer | None:
    """Pop one complete response from `buf`; None while it is incomplete. Bodies must have a
    Content-Length (printd's always do, and nginx passes it on)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HttpFramingError("response head too large")
        return None
    head = bytes(buf[:end]).decode("latin-1")
    status_line, _, rest = head.partition("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpFramingError(f"not an HTTP/1.1 answer: {status_line[:40]!r}")
    headers = {}
    for line in rest.split("\r\n") if rest else ():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HttpFramingError("chunked answers are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpFramingError("bad Content-Length") from None
    if not 0 <= length <= MAX_BODY:
        raise HttpFramingError(f"Content-Length {length} out of range")
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return HttpAnswer(int(parts[1]), headers, body)


#: what a request's callback gets: the answer, or None and the error kind ("timeout", "ECONNREFUSED")
Done = Callable[[HttpAnswer | None, str], None]


class _Request:
    __slots__ = ("data", "body_size", "done", "deadline")

    def __init__(self, data: bytes, body_size: int, done: Done) -> None:
        self.data = data
        self.body_size = body_size
        self.done = done
        self.deadline = 0.0


class _Conn:
    __slots__ = ("sock", "fd", "connected", "rbuf", "wbuf", "req")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.connected = False
        self.rbuf = bytearray()
        self.wbuf = b""
        self.req: _Request | None = None


class HttpPool:
    def __init__(self, client: Client, *, size: int, timeout: float, count: Counters | None = None) -> None:
        self.client = client
        self.target = client.target
        self.size = size
        self.timeout = timeout
        self.count = count or Counters()
        self.queue: deque[_Request] = deque()
        self.idle: list[_Conn] = []
        self.conns: dict[int, _Conn] = {}

    @property
    def busy(self) -> int:
        return len(self.queue) + sum(1 for c in self.conns.values() if c.req is not None)

    def request(self, method: str, path: str, headers: str, body: bytes, done: Done) -> None:
        """Queue one request; `headers` are complete header lines ("Name: value\\r\\n" each)."""
        data = (
            f"{method} {self.target.path(path)} HTTP/1.1\r\nHost: {self.target.host_header}\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.queue.append(_Request(data, len(body), done))
        self._pump()

    def sweep(self, now: float) -> None:
        """Fail the requests whose deadline (monotonic) has passed, with their connections."""
        for conn in list(self.conns.values()):
            if conn.req is not None and now >= conn.req.deadline:
                self._drop(conn, "timeout")

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        self.queue.clear()

    # ---- inside the loop
    def _pump(self) -> None:
        while self.queue:
            if self.idle:
                conn = self.idle.pop()
            elif len(self.conns) < self.size:
                opened = self._open()
                if opened is None:
                    continue  # that request failed at once; try the next
                conn = opened
            else:
                return
            self._assign(conn, self.queue.popleft())

    def _open(self) -> _Conn | None:
        sock = socket.socket(self.target.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.target.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.queue.popleft().done(None, errno.errorcode.get(err, str(err)))
            return None
        conn = _Conn(sock)
        self.conns[conn.fd] = conn
        self.client.watch(conn.fd, EPOLLOUT, lambda ev: self._event(conn, ev))
        return conn

    def _assign(self, conn: _Conn, req: _Request) -> None:
        conn.req = req
        req.deadline = time.monotonic() + self.timeout
        self.count.msgs_tx += 1
        self.count.app_tx += req.body_size
        if conn.connected:
            self._send(conn, req.data)
        else:
            conn.wbuf = req.data  # goes out once connect() completes

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._drop(conn, type(exc).__name__)
            return
        self.count.wire_tx += n
        conn.wbuf = data[n:]
        self.client.ep.modify(conn.fd, EPOLLIN | EPOLLOUT if conn.wbuf else EPOLLIN)

    def _event(self, conn: _Conn, ev: int) -> None:
        if not conn.connected:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._drop(conn, errno.errorcode.get(err, str(err)))
                return
            conn.connected = True
            self._send(conn, conn.wbuf)
            return
        if ev & EPOLLOUT and conn.wbuf:
            self._send(conn, conn.wbuf)
        if ev & (EPOLLIN | EPOLLHUP | EPOLLERR) and conn.fd in self.conns:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(conn, type(exc).__name__)
            return
        if not data:
            self._drop(conn, "connection closed")
            return
        self.count.wire_rx += len(data)
        conn.rbuf += data
        try:
            answer = parse_response(conn.rbuf)
        except HttpFramingError as exc:
            self._drop(conn, str(exc))
            return
        if answer is None:
            return
        req, conn.req = conn.req, None
        self.count.msgs_rx += 1
        self.count.app_rx += len(answer.body)
        if answer.headers.get("connection", "").lower() == "close" or conn.rbuf:
            self._close(conn)
        else:
            self.idle.append(conn)
        if req is not None:
            req.done(answer, "")
        self._pump()

    def _drop(self, conn: _Conn, why: str) -> None:
        """The connection failed: its request (if any) fails with `why`; a connection idle in the
        pool that the server closed is just forgotten."""
        req = conn.req
        self._close(conn)
        if req is not None:
            req.done(None, why)
        self._pump()

    def _close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        if conn in self.idle:
            self.idle.remove(conn)
        self.client.unwatch(conn.fd)
        conn.sock.close()
        conn.req = None
