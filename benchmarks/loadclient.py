#!/usr/bin/env python3
"""Raw-frame load client for printd and its peers (127.0.0.1 only).

It speaks WebSocket itself on non-blocking sockets and one epoll loop per process: the
upgrade request is written by hand, frames are masked with an all-zero key, and the
envelopes are built by bytes formatting. That keeps the client's cost per message far
below the servers' so that, pinned to its own core, it is not the bottleneck. Every mode
reports the client's own CPU share over its measurement window: check it.

Each connection mints its own HS256 token (PyJWT, secret from $JWT_SECRET) and counts as
open once the server's `hello` has arrived.

Modes (every loop is bounded in count and time; the result is one JSON line):
  idle     --conns N: N authenticated agents connect, then hold for --hold s (or until stdin closes)
  connect  --conns N --concurrency K: N handshakes, at most K in flight; time until all are open
  ping     --conns C [--epoll]: closed loop, one `ping` in flight per connection (--window W);
           round trips/s and their latency. --epoll runs the loop as one tight inlined epoll
           loop (cheaper per message than the generic callback loop used otherwise)
  load     --agents N --dashboards D --companies C: every agent sends one ~--payload-bytes
           `printer.status` per --interval s (random phase); dashboard d watches company d % C.
           Latency is agent send `ts` -> dashboard receipt of the newest item in each batch.
Options for all modes:
  --sio        Socket.IO v5 over Engine.IO v4 framing (GET /socket.io/?EIO=4&transport=websocket,
               '0{..}' open, '40' connect, events as 42["name",{...}], '2' answered with '3')
  --deflate    offer permessage-deflate (client_max_window_bits=10, no context takeover both ways);
               if accepted, outgoing messages >= 1 KiB are compressed, incoming RSV1 frames inflated
  --auth       query (?token=, default) or header (Authorization: Bearer; not with --sio)
  --procs P    split the connections over P worker processes (the fd limit is per process)
Bytes are counted both on the wire (what send()/recv() moved) and as application payload
(uncompressed message bodies); counters cover the measurement window.

Process layout: this process is the coordinator; it starts P workers (this file with --worker),
lets them connect, tells them when the window starts ("go" line on their stdin) and merges their
results. Lines it prints: {"phase":"ready",...} once every connection is open (idle: then holds),
{"phase":"window",...} with the epoch times of the measurement window, {"phase":"result",...}.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import random
import resource
import select
import socket
import struct
import subprocess
import sys
import time
import zlib
from array import array
from collections import deque
from typing import Any

import jwt
import orjson
from hdrh.histogram import HdrHistogram

HOST = "127.0.0.1"
WS_KEY = base64.b64encode(b"printd-benchmark").decode()
MASK = b"\x00\x00\x00\x00"
DEFLATE_OFFER = (
    "permessage-deflate; client_max_window_bits=10; client_no_context_takeover; server_no_context_takeover"
)
DEFLATE_MIN = 1024
DEFLATE_TAIL = b"\x00\x00\xff\xff"
RECV_SIZE = 262144
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
MAX_DURATION = 600.0
MAX_HOLD = 3600.0
HIST_MAX_US = 600_000_000

# connection states
CONNECTING, HTTP, SIO_OPEN, SIO_CONNECT, HELLO, OPEN, CLOSED = range(7)


# ------------------------------------------------------------------------------------------ framing


def encode_frame(payload: bytes, opcode: int = OP_TEXT, rsv1: bool = False) -> bytes:
    """One masked client frame (all-zero mask key: the payload goes out as is)."""
    n = len(payload)
    b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0xFE, n)
    else:
        head = struct.pack("!BBQ", b0, 0xFF, n)
    return head + MASK + payload


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete frame from buf as (first header byte, payload)."""
    out = []
    i = 0
    end = len(buf)
    while end - i >= 2:
        b1 = buf[i + 1]
        n = b1 & 0x7F
        h = 2
        if n == 126:
            if end - i < 4:
                break
            n = (buf[i + 2] << 8) | buf[i + 3]
            h = 4
        elif n == 127:
            if end - i < 10:
                break
            n = int.from_bytes(buf[i + 2 : i + 10], "big")
            h = 10
        if b1 & 0x80:  # servers do not mask; tolerate it anyway
            if end - i < h + 4 + n:
                break
            key = buf[i + h : i + h + 4]
            data = bytes(b ^ key[j % 4] for j, b in enumerate(buf[i + h + 4 : i + h + 4 + n]))
            out.append((buf[i], data))
            i += h + 4 + n
            continue
        if end - i < h + n:
            break
        out.append((buf[i], bytes(buf[i + h : i + h + n])))
        i += h + n
    if i:
        del buf[:i]
    return out


class Deflate:
    """permessage-deflate as negotiated: raw deflate, optionally without context takeover."""

    def __init__(self, params: dict[str, str | None]) -> None:
        # We offered client_no_context_takeover, so we may always reset our context: every
        # message gets a fresh compressor, whatever the server answered.
        self.bits = max(9, min(10, int(params.get("client_max_window_bits") or 10)))
        self.server_no_context = "server_no_context_takeover" in params
        self.server_bits = int(params.get("server_max_window_bits") or 15)
        self._inflater = None if self.server_no_context else zlib.decompressobj(-self.server_bits)

    def compress(self, payload: bytes) -> bytes:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.bits)
        data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4] if data.endswith(DEFLATE_TAIL) else data

    def inflate(self, payload: bytes) -> bytes:
        d = self._inflater or zlib.decompressobj(-self.server_bits)
        return d.decompress(payload + DEFLATE_TAIL)


def parse_extensions(value: str) -> dict[str, str | None] | None:
    """Parameters of the accepted permessage-deflate extension, or None."""
    for ext in value.split(","):
        parts = [p.strip() for p in ext.split(";")]
        if parts[0].lower() != "permessage-deflate":
            continue
        params: dict[str, str | None] = {}
        for p in parts[1:]:
            if not p:
                continue
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"') or None
        return params
    return None


# ------------------------------------------------------------------------------------------ protocol


class Protocol:
    """The bytes of printd's protocol, raw JSON envelopes or Socket.IO events."""

    def __init__(self, sio: bool) -> None:
        self.sio = sio
        if sio:
            self.ping_fmt = b'42["ping",{"id":%d}]'
            self.status_head = b'42["printer.status",{"printer_id":"p-%d","status":"online","ts":'
            self.status_tail = b"}]"
        else:
            self.ping_fmt = b'{"event":"ping","id":%d,"data":{}}'
            self.status_head = (
                b'{"event":"printer.status","data":{"printer_id":"p-%d","status":"online","ts":'
            )
            self.status_tail = b"}}"

    def decode(self, payload: bytes) -> tuple[Any, Any]:
        """(event, data) of an application message; (None, None) if it is not one."""
        try:
            if self.sio:
                if payload[:2] != b"42":
                    return None, None
                arr = orjson.loads(payload[2:])
                return arr[0], (arr[1] if len(arr) > 1 else None)
            obj = orjson.loads(payload)
            return obj.get("event"), obj.get("data")
        except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
            return None, None

    def is_ack(self, payload: bytes) -> bool:
        if self.sio:
            return payload.startswith(b'42["ack"')
        return b'"ack"' in payload


def status_fields(index: int, size: int) -> bytes:
    """Deterministic JSON fields that pad a status message to about `size` bytes: a printer's
    details and its job queue (consecutive job and order numbers, random sizes and ages), so
    that it compresses like a real status rather than like noise or like a repeated string."""
    rnd = random.Random(index)
    head = {
        "model": rnd.choice(["TM-T88VI", "TM-m30III", "TSP143IV", "SRP-350V", "CT-S851II"]),
        "firmware": f"{rnd.randint(1, 9)}.{rnd.randint(0, 40)}.{rnd.randint(0, 999)}",
        "paper": rnd.choice(["ok", "near_end", "out"]),
        "cover_open": rnd.random() < 0.05,
        "temp_c": round(rnd.uniform(28, 71), 1),
        "jobs_done": rnd.randint(0, 10**6),
        "uptime_s": rnd.randint(0, 10**7),
    }
    body = orjson.dumps(head)[1:-1]
    budget = size - 110 - len(body)  # envelope, printer_id, status, ts, "queue":[...]
    jobs: list[bytes] = []
    used = 0
    job_id, order, age = rnd.randint(10**8, 10**9), rnd.randint(0, 900000), 0
    while True:
        job_id += rnd.randint(1, 40)
        order += rnd.randint(0, 3)
        age += rnd.randint(0, 4000)
        job = orjson.dumps(
            {
                "job_id": job_id,
                "order": f"o-{order:06d}",
                "station": rnd.choice(["kitchen", "bar", "counter", "grill", "pass"]),
                "copies": rnd.randint(1, 2),
                "state": "printing" if not jobs else "queued",
                "bytes": rnd.randint(300, 9000),
                "age_ms": age,
            }
        )
        if jobs and used + len(job) + 1 > budget:
            break
        jobs.append(job)
        used += len(job) + 1
    return b"," + body + b',"queue":[' + b",".join(jobs) + b"]"


def mint(claims: dict[str, Any], secret: str, ttl: int = 4 * 3600) -> str:
    return jwt.encode({**claims, "exp": int(time.time()) + ttl}, secret, algorithm="HS256")


def agent_claims(index: int, companies: int) -> dict[str, Any]:
    company = index % companies
    return {
        "sub": f"agent-{index}",
        "role": "agent",
        "company": f"c-{company}",
        "branch": f"b-{company}-{index // companies % 4}",
    }


def dashboard_claims(index: int, companies: int) -> dict[str, Any]:
    return {"sub": f"dash-{index}", "role": "dashboard", "company": f"c-{index % companies}"}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def histogram(values_s: array) -> HdrHistogram:
    h = HdrHistogram(1, HIST_MAX_US, 3)
    for v in values_s:
        h.record_value(min(HIST_MAX_US, max(1, int(v * 1e6))))
    return h


def summarize(h: HdrHistogram) -> dict[str, Any]:
    if h.get_total_count() == 0:
        return {"n": 0}
    return {
        "n": h.get_total_count(),
        **{
            f"p{q}_ms".replace(".", ""): round(h.get_value_at_percentile(q) / 1000, 3)
            for q in (50, 90, 99, 99.9)
        },
        "max_ms": round(h.get_max_value() / 1000, 3),
        "mean_ms": round(h.get_mean_value() / 1000, 3),
    }


# ------------------------------------------------------------------------------------------ connections


class Conn:
    __slots__ = (
        "sock",
        "fd",
        "state",
        "rbuf",
        "wbuf",
        "request",
        "deflate",
        "frag_b0",
        "frag",
        "t_start",
        "kind",
        "index",
        "company",
        "pend",
    )

    def __init__(self, sock: socket.socket, request: bytes, kind: str, index: int, company: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.rbuf = bytearray()
        self.wbuf = b""
        self.request = request
        self.deflate: Deflate | None = None
        self.frag_b0 = 0
        self.frag: bytearray | None = None
        self.t_start = 0.0
        self.kind = kind
        self.index = index
        self.company = company
        self.pend: deque[float] = deque()


class Counters:
    __slots__ = ("wire_tx", "wire_rx", "app_tx", "app_rx", "msgs_tx", "msgs_rx")

    def __init__(self) -> None:
        self.wire_tx = self.wire_rx = self.app_tx = self.app_rx = self.msgs_tx = self.msgs_rx = 0

    def snapshot(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class Client:
    """One epoll loop over many WebSocket client connections."""

    def __init__(self, args: argparse.Namespace, proto: Protocol) -> None:
        self.args = args
        self.proto = proto
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.count = Counters()
        self.errors: dict[str, int] = {}
        self.on_message = self._ignore
        self.on_open = self._ignore_conn
        self.on_close = self._ignore_conn
        self.stdin_eof = False
        self.go_line: str | None = None
        os.set_blocking(sys.stdin.fileno(), False)
        self.stdin_buf = b""
        self.ep.register(sys.stdin.fileno(), EPOLLIN)
        self.deflate_accepted = 0

    @staticmethod
    def _ignore(conn: Conn, payload: bytes) -> None:
        pass

    @staticmethod
    def _ignore_conn(conn: Conn) -> None:
        pass

    # ---- requests
    def request_for(self, token: str) -> bytes:
        a = self.args
        if a.sio:
            target = f"/socket.io/?EIO=4&transport=websocket&token={token}"
            auth = ""
        elif a.auth == "header":
            target = "/printing-ws"
            auth = f"Authorization: Bearer {token}\r\n"
        else:
            target = f"/printing-ws?token={token}"
            auth = ""
        ext = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if a.deflate else ""
        return (
            f"GET {target} HTTP/1.1\r\nHost: {HOST}:{a.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
            f"{auth}{ext}\r\n"
        ).encode()

    # ---- connection life cycle
    def start(self, conn_spec: tuple[bytes, str, int, int]) -> Conn:
        request, kind, index, company = conn_spec
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock, request, kind, index, company)
        conn.t_start = time.monotonic()
        err = sock.connect_ex((HOST, self.args.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            conn.state = CLOSED
            self._error(errno.errorcode.get(err, str(err)))
            return conn
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, EPOLLOUT)
        return conn

    def _error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def fail(self, conn: Conn, reason: str) -> None:
        """A connection that did not open (or was lost): count the reason, drop it."""
        if conn.state == CLOSED:
            return
        was_open = conn.state == OPEN
        self._error(("lost " if was_open else "") + reason)
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
        self.count.wire_tx += n
        if n < len(data):
            conn.wbuf = data[n:]
            self.ep.modify(conn.fd, EPOLLIN | EPOLLOUT)

    def send_message(self, conn: Conn, payload: bytes) -> None:
        self.count.app_tx += len(payload)
        self.count.msgs_tx += 1
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
        self.count.wire_tx += n
        conn.wbuf = conn.wbuf[n:]
        if not conn.wbuf:
            self.ep.modify(conn.fd, EPOLLIN)

    def poll(self, timeout: float) -> None:
        conns = self.conns
        for fd, ev in self.ep.poll(max(0.0, timeout)):
            conn = conns.get(fd)
            if conn is None:
                if fd == sys.stdin.fileno():
                    self._read_stdin()
                continue
            if conn.state == CONNECTING:
                self._connected(conn)
                continue
            if ev & EPOLLOUT and conn.wbuf:
                self._flush(conn)
            if ev & (EPOLLIN | EPOLLHUP | EPOLLERR) and conn.state != CLOSED:
                self._read(conn)

    def _read_stdin(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except BlockingIOError:
            return
        if not data:
            self.stdin_eof = True
            self.ep.unregister(sys.stdin.fileno())
            return
        self.stdin_buf += data
        while b"\n" in self.stdin_buf:
            line, _, self.stdin_buf = self.stdin_buf.partition(b"\n")
            self.go_line = line.decode()

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
        self.count.wire_rx += len(data)
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
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else ""
                    self.fail(conn, f"close frame {code}")
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
            self.count.app_rx += len(payload)
            self.count.msgs_rx += 1
            if conn.state == OPEN:
                if self.proto.sio and payload[:2] != b"42":
                    self._engineio(conn, payload)
                else:
                    self.on_message(conn, payload)
            else:
                self._handshake_message(conn, payload)
            if conn.state == CLOSED:
                return

    def _http_response(self, conn: Conn) -> bool:
        buf = conn.rbuf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
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
        conn.state = SIO_OPEN if self.proto.sio else HELLO
        return True

    def _engineio(self, conn: Conn, payload: bytes) -> None:
        if payload == b"2":
            self.send_raw(conn, encode_frame(b"3"))
        elif payload[:2] in (b"41", b"1"):
            self.fail(conn, "socket.io disconnect")

    def _handshake_message(self, conn: Conn, payload: bytes) -> None:
        state = conn.state
        if state == SIO_OPEN:
            if payload[:1] == b"0":
                conn.state = SIO_CONNECT
                self.send_message(conn, b"40")
            return
        if state == SIO_CONNECT:
            if payload[:2] == b"40":
                conn.state = HELLO
            elif payload[:2] == b"44":
                self.fail(conn, "socket.io connect_error")
            return
        if self.proto.sio and payload[:2] != b"42":
            self._engineio(conn, payload)
            return
        event, _data = self.proto.decode(payload)
        if event == "hello":
            conn.state = OPEN
            self.on_open(conn)

    # ---- opening many connections
    def open_all(
        self, specs: list[tuple[bytes, str, int, int]], concurrency: int, timeout: float
    ) -> tuple[list[Conn], float]:
        """Open every spec with at most `concurrency` handshakes in flight; (open conns, seconds)."""
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
        while (todo or in_flight) and not self.stdin_eof:
            while todo and len(in_flight) < concurrency:
                conn = self.start(todo.popleft())
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
                    self._error("not started (phase timeout)")
                break
        elapsed = time.monotonic() - t0
        self.on_open = self.on_close = self._ignore_conn
        return [c for c in opened if c.state == OPEN], elapsed

    def wait_go(self, deadline: float) -> tuple[float, float, float] | None:
        """Service the sockets until the coordinator's 'go START M0 M1' line (epoch seconds)."""
        while self.go_line is None and not self.stdin_eof and time.time() < deadline:
            self.poll(0.05)
        if self.go_line is None:
            return None
        _, start, m0, m1 = self.go_line.split()
        return float(start), float(m0), float(m1)

    def serve_until(self, t_end: float) -> None:
        while time.time() < t_end and not self.stdin_eof:
            self.poll(min(0.2, t_end - time.time()))


# ------------------------------------------------------------------------------------------ worker modes


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_nofile(need: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if need + 64 > hard:
        raise SystemExit(f"{need} connections need more than the fd hard limit {hard}: use --procs")


Spec = tuple[bytes, str, int, int]  # upgrade request, kind, index, company


def agent_specs(client: Client, a: argparse.Namespace, first: int, n: int) -> list[Spec]:
    return [
        (client.request_for(mint(agent_claims(i, a.companies), a.secret)), "agent", i, i % a.companies)
        for i in range(first, first + n)
    ]


def dashboard_specs(client: Client, a: argparse.Namespace, first: int, n: int) -> list[Spec]:
    return [
        (
            client.request_for(mint(dashboard_claims(d, a.companies), a.secret)),
            "dashboard",
            d,
            d % a.companies,
        )
        for d in range(first, first + n)
    ]


def base_result(client: Client, opened: list[Conn], open_s: float) -> dict[str, Any]:
    return {
        "ok": len(opened),
        "fail": sum(v for k, v in client.errors.items() if not k.startswith("lost")),
        "errors": client.errors,
        "open_s": round(open_s, 3),
        "deflate_accepted": client.deflate_accepted,
    }


def worker_idle(client: Client, a: argparse.Namespace) -> None:
    specs = agent_specs(client, a, a.first, a.conns)
    c0 = cpu_seconds()
    opened, open_s = client.open_all(specs, a.concurrency, a.connect_timeout)
    emit(
        {
            "phase": "ready",
            **base_result(client, opened, open_s),
            "client_cpu_s": round(cpu_seconds() - c0, 3),
        }
    )
    client.serve_until(time.time() + a.hold)


def worker_connect(client: Client, a: argparse.Namespace) -> None:
    specs = agent_specs(client, a, a.first, a.conns)
    emit({"phase": "prepared"})
    go = client.wait_go(time.time() + 120)
    if go is None:
        return
    start = go[0]
    while time.time() < start:
        time.sleep(min(0.01, max(0.0, start - time.time())))
    c0 = cpu_seconds()
    t0 = time.time()
    opened, open_s = client.open_all(specs, a.concurrency, a.connect_timeout)
    t1 = time.time()
    cpu = cpu_seconds() - c0
    emit(
        {
            "phase": "result",
            **base_result(client, opened, open_s),
            "t_start": t0,
            "t_done": t1,
            "client_cpu_s": round(cpu, 3),
        }
    )
    client.close_all()


class Window:
    """Marks the measurement window [m0, m1): counters and CPU at both ends."""

    def __init__(self, client: Client, m0: float, m1: float) -> None:
        self.client, self.m0, self.m1 = client, m0, m1
        self.start: tuple[float, float, dict[str, int]] | None = None
        self.end: tuple[float, float, dict[str, int]] | None = None

    def tick(self, now: float) -> None:
        if self.start is None and now >= self.m0:
            self.start = (now, cpu_seconds(), self.client.count.snapshot())
        if self.end is None and now >= self.m1:
            self.end = (now, cpu_seconds(), self.client.count.snapshot())

    def result(self) -> dict[str, Any]:
        """Counter deltas over the window, and the client's CPU share (over the marks' actual times)."""
        if self.start is None or self.end is None:
            return {"window_error": "window not completed"}
        dt = max(1e-6, self.end[0] - self.start[0])
        cpu = self.end[1] - self.start[1]
        c = {k: self.end[2][k] - self.start[2][k] for k in self.end[2]}
        return {"client_cpu_s": round(cpu, 3), "client_cpu_pct": round(100 * cpu / dt, 1), **c}


def worker_ping(client: Client, a: argparse.Namespace) -> None:
    specs = agent_specs(client, a, a.first, a.conns)
    opened, open_s = client.open_all(specs, a.concurrency, a.connect_timeout)
    emit({"phase": "ready", **base_result(client, opened, open_s)})
    go = client.wait_go(time.time() + 120)
    if go is None:
        return
    start, m0, m1 = go
    while time.time() < start:
        client.poll(min(0.05, start - time.time()))
    win = Window(client, m0, m1)
    lat = array("d")
    if a.epoll and not client.deflate_accepted:
        tight_ping_loop(client, opened, a, win, lat)
    else:
        generic_ping_loop(client, opened, a, win, lat)
    emit(
        {
            "phase": "result",
            **base_result(client, opened, open_s),
            **win.result(),
            "loop": "epoll" if a.epoll and not client.deflate_accepted else "generic",
            "round_trips": len(lat),
            "hist": histogram(lat).encode().decode(),
        }
    )
    client.close_all()


def generic_ping_loop(
    client: Client, opened: list[Conn], a: argparse.Namespace, win: Window, lat: array
) -> None:
    proto = client.proto
    fmt = proto.ping_fmt
    seq = 0
    pc = time.perf_counter
    t_wall, t_perf = time.time(), pc()
    m0p, m1p = t_perf + (win.m0 - t_wall), t_perf + (win.m1 - t_wall)

    def send_ping(conn: Conn) -> None:
        nonlocal seq
        seq += 1
        conn.pend.append(pc())
        client.send_message(conn, fmt % seq)

    def on_message(conn: Conn, payload: bytes) -> None:
        if not proto.is_ack(payload) or not conn.pend:
            return
        now = pc()
        t = conn.pend.popleft()
        if m0p <= t < m1p:
            lat.append(now - t)
        if now < m1p:
            send_ping(conn)

    client.on_message = on_message
    for conn in opened:
        for _ in range(a.window):
            send_ping(conn)
    while True:
        now = time.time()
        win.tick(now)
        if now >= win.m1:
            break
        client.poll(min(0.05, win.m1 - now))


def tight_ping_loop(
    client: Client, opened: list[Conn], a: argparse.Namespace, win: Window, lat: array
) -> None:
    """The closed loop inlined on the same epoll object: no callbacks, no per-message allocations
    beyond the frame itself. Control frames and Engine.IO pings are still answered."""
    sio = client.proto.sio
    fmt = client.proto.ping_fmt
    pc = time.perf_counter
    count = client.count
    conns = {c.fd: (c.sock, c.rbuf, c.pend) for c in opened}
    ep = client.ep
    seq = 0
    t_wall, t_perf = time.time(), pc()
    m0p, m1p = t_perf + (win.m0 - t_wall), t_perf + (win.m1 - t_wall)
    lat_append = lat.append
    pong_eio = encode_frame(b"3")

    def frame(payload: bytes) -> bytes:
        return bytes((0x81, 0x80 | len(payload))) + MASK + payload  # pings are < 126 bytes

    for sock, _buf, pend in conns.values():
        out = []
        for _ in range(a.window):
            seq += 1
            out.append(frame(fmt % seq))
            pend.append(pc())
        data = b"".join(out)
        sock.sendall(data)
        count.wire_tx += len(data)
    wire_rx = wire_tx = 0
    try:
        while True:
            now = pc()
            win.tick(time.time())
            if now >= m1p:
                break
            for fd, _ev in ep.poll(0.05):
                entry = conns.get(fd)
                if entry is None:
                    continue
                sock, buf, pend = entry
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    ep.unregister(fd)
                    del conns[fd]
                    client._error("lost during ping")
                    continue
                n = len(data)
                wire_rx += n
                if not buf and n >= 2 and n == data[1] + 2 and data[1] < 126:
                    frames = [(data[0], data[2:])]  # the usual case: exactly one small frame
                else:
                    buf += data
                    frames = parse_frames(buf)
                now = pc()
                k = 0
                for b0, payload in frames:
                    op = b0 & 0x0F
                    if op != OP_TEXT:
                        if op == OP_PING:
                            sock.sendall(encode_frame(payload, OP_PONG))
                        continue
                    if sio:
                        if payload[:2] != b"42":
                            if payload == b"2":
                                sock.sendall(pong_eio)
                            continue
                    elif b'"ack"' not in payload:
                        continue
                    if not pend:
                        continue
                    t = pend.popleft()
                    if m0p <= t < m1p:
                        lat_append(now - t)
                    k += 1
                if k and now < m1p:
                    if k == 1:
                        seq += 1
                        out = frame(fmt % seq)
                        pend.append(pc())
                    else:
                        parts = []
                        for _ in range(k):
                            seq += 1
                            parts.append(frame(fmt % seq))
                        out = b"".join(parts)
                        pend.extend([pc()] * k)
                    n = sock.send(out)
                    if n < len(out):
                        sock.setblocking(True)
                        sock.sendall(out[n:])
                        sock.setblocking(False)
                    wire_tx += len(out)
            # keep the shared counters roughly current for the window marks
            count.wire_rx += wire_rx
            count.wire_tx += wire_tx
            wire_rx = wire_tx = 0
    finally:
        count.wire_rx += wire_rx
        count.wire_tx += wire_tx


def worker_load(client: Client, a: argparse.Namespace) -> None:
    proto = client.proto
    specs = dashboard_specs(client, a, a.first_dashboard, a.dashboards)
    specs += agent_specs(client, a, a.first, a.agents)
    fields = {i: status_fields(i, a.payload_bytes) for i in range(a.first, a.first + a.agents)}
    opened, open_s = client.open_all(specs, a.concurrency, a.connect_timeout)
    agents = [c for c in opened if c.kind == "agent"]
    emit(
        {
            "phase": "ready",
            **base_result(client, opened, open_s),
            "agents_open": len(agents),
            "dashboards_open": len(opened) - len(agents),
        }
    )
    go = client.wait_go(time.time() + 120)
    if go is None:
        return
    start, m0, m1 = go
    win = Window(client, m0, m1)
    lat_newest, lat_oldest = array("d"), array("d")
    st = {"batches": 0, "items": 0, "snapshots": 0, "bad": 0}
    sent_by_company: dict[int, int] = {}

    def on_message(conn: Conn, payload: bytes) -> None:
        now = time.time()
        if conn.kind != "dashboard" or not m0 <= now < m1:
            return
        event, data = proto.decode(payload)
        if not isinstance(data, dict):
            return
        if event == "printer.status.batch":
            items = data.get("printers") or []
        elif event == "printer.status":
            items = [data]
        elif event == "printer.status.snapshot":
            st["snapshots"] += 1
            return
        else:
            return
        ts = [it["ts"] for it in items if isinstance(it, dict) and isinstance(it.get("ts"), float)]
        st["batches"] += 1
        st["items"] += len(items)
        if len(ts) != len(items):
            st["bad"] += len(items) - len(ts)
        if ts:
            lat_newest.append(now - max(ts))
            lat_oldest.append(now - min(ts))

    client.on_message = on_message
    rnd = random.Random(a.worker_id)
    agents.sort(key=lambda c: c.index)
    schedule = sorted(((rnd.random() * a.interval, c) for c in agents), key=lambda x: x[0])
    heads = {c.index: proto.status_head % c.index for c in agents}
    tails = {c.index: fields[c.index] + proto.status_tail for c in agents}
    n = len(schedule)
    cycle = 0
    k = 0
    due = start + schedule[0][0] if n else m1
    t_end = m1 + a.grace
    while True:
        now = time.time()
        win.tick(now)
        if now >= t_end or client.stdin_eof:
            break
        while n and due <= now and due < m1:
            conn = schedule[k][1]
            if conn.state == OPEN:
                ts = time.time()
                client.send_message(conn, heads[conn.index] + b"%.6f" % ts + tails[conn.index])
                if ts >= m0:
                    sent_by_company[conn.company] = sent_by_company.get(conn.company, 0) + 1
            k += 1
            if k == n:
                k = 0
                cycle += 1
            due = start + cycle * a.interval + schedule[k][0]
        next_t = min(due if due < m1 else t_end, t_end)
        if win.start is None:
            next_t = min(next_t, m0)
        elif win.end is None:
            next_t = min(next_t, m1)
        client.poll(min(0.05, next_t - time.time()))
    emit(
        {
            "phase": "result",
            **base_result(client, opened, open_s),
            **win.result(),
            **st,
            "sent_by_company": {str(c): v for c, v in sent_by_company.items()},
            "dash_companies": [
                d % a.companies for d in range(a.first_dashboard, a.first_dashboard + a.dashboards)
            ],
            "hist_newest": histogram(lat_newest).encode().decode(),
            "hist_oldest": histogram(lat_oldest).encode().decode(),
        }
    )
    client.close_all()


def worker_main(a: argparse.Namespace) -> None:
    a.secret = os.environ.get("JWT_SECRET") or sys.exit("JWT_SECRET is not set")
    raise_nofile(a.conns if a.mode != "load" else a.agents + a.dashboards)
    client = Client(a, Protocol(a.sio))
    modes = {"idle": worker_idle, "connect": worker_connect, "ping": worker_ping, "load": worker_load}
    modes[a.mode](client, a)


# ------------------------------------------------------------------------------------------ coordinator


def split(total: int, parts: int, i: int) -> tuple[int, int]:
    """(offset, count) of share i when `total` items are split over `parts`."""
    base, extra = divmod(total, parts)
    return i * base + min(i, extra), base + (1 if i < extra else 0)


class Workers:
    """The worker processes and their JSON lines."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(a.procs):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                a.mode,
                "--worker",
                "--worker-id",
                str(i),
                *worker_args(a, i),
            ]
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        self.fds = {p.stdout.fileno(): i for i, p in enumerate(self.procs)}  # type: ignore[union-attr]
        self.lines: list[deque[bytes]] = [deque() for _ in self.procs]
        self.partial = [b"" for _ in self.procs]
        self.eof = [False for _ in self.procs]

    def _read(self, fd: int) -> None:
        i = self.fds[fd]
        data = os.read(fd, 65536)
        if not data:
            self.eof[i] = True
            return
        *complete, self.partial[i] = (self.partial[i] + data).split(b"\n")
        self.lines[i].extend(complete)

    def collect(self, phase: str, timeout: float) -> list[dict[str, Any]]:
        """The next line with this phase from every worker (None entries for those that failed)."""
        got: dict[int, dict[str, Any]] = {}
        end = time.time() + timeout
        while len(got) < len(self.procs):
            for i, lines in enumerate(self.lines):
                while i not in got and lines:
                    try:
                        obj = json.loads(lines.popleft())
                    except ValueError:
                        continue
                    if obj.get("phase") == phase:
                        got[i] = obj
                if i not in got and self.eof[i] and not lines:
                    got[i] = {"phase": phase, "error": f"worker {i} exited"}
            fds = [fd for fd, i in self.fds.items() if i not in got and not self.eof[i]]
            if not fds or time.time() >= end:
                break
            ready, _, _ = select.select(fds, [], [], min(1.0, max(0.0, end - time.time())))
            for fd in ready:
                self._read(fd)
        return [
            got.get(i, {"phase": phase, "error": f"worker {i}: no {phase} line"})
            for i in range(len(self.procs))
        ]

    def send(self, line: str) -> None:
        for p in self.procs:
            try:
                p.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, ValueError):
                pass

    def wait(self, timeout: float) -> None:
        end = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.close()  # type: ignore[union-attr]
                except (BrokenPipeError, OSError):
                    pass
        end = time.time() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def worker_args(a: argparse.Namespace, i: int) -> list[str]:
    args = [
        "--port",
        str(a.port),
        "--concurrency",
        str(max(1, a.concurrency // a.procs)),
        "--connect-timeout",
        str(a.connect_timeout),
        "--hold",
        str(a.hold),
        "--window",
        str(a.window),
        "--companies",
        str(a.companies),
        "--interval",
        str(a.interval),
        "--payload-bytes",
        str(a.payload_bytes),
        "--grace",
        str(a.grace),
        "--auth",
        a.auth,
    ]
    args += ["--sio"] * a.sio + ["--deflate"] * a.deflate + ["--epoll"] * a.epoll
    if a.mode == "load":
        first, n = split(a.agents, a.procs, i)
        first_d, n_d = split(a.dashboards, a.procs, i)
        args += [
            "--agents",
            str(n),
            "--first",
            str(a.first + first),
            "--dashboards",
            str(n_d),
            "--first-dashboard",
            str(first_d),
        ]
    else:
        first, n = split(a.conns, a.procs, i)
        args += ["--conns", str(n), "--first", str(a.first + first)]
    return args


def merge_hist(encoded: list[str]) -> HdrHistogram:
    h = HdrHistogram(1, HIST_MAX_US, 3)
    for e in encoded:
        if e:
            h.decode_and_add(e)
    return h


def sum_key(results: list[dict[str, Any]], key: str) -> Any:
    return sum(r.get(key, 0) or 0 for r in results)


def merge_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("errors") or {}).items():
            out[k] = out.get(k, 0) + v
        if r.get("error"):
            out[r["error"]] = out.get(r["error"], 0) + 1
    return out


def common(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ok": sum_key(results, "ok"),
        "fail": sum_key(results, "fail"),
        "errors": merge_errors(results),
        "open_s": max((r.get("open_s") or 0) for r in results),
        "deflate_accepted": sum_key(results, "deflate_accepted"),
    }


def traffic(results: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum_key(results, k) for k in Counters.__slots__}
    out["client_cpu_pct"] = round(sum_key(results, "client_cpu_pct"), 1)
    for k in ("wire_tx", "wire_rx", "app_tx", "app_rx"):
        out[k + "_KBps"] = round(out[k] / duration / 1000, 1)
    return out


def coordinator(a: argparse.Namespace) -> int:
    workers = Workers(a)
    params = {"mode": a.mode, "procs": a.procs, "sio": a.sio, "deflate": a.deflate}
    try:
        if a.mode == "idle":
            ready = workers.collect("ready", a.connect_timeout + a.conns / 50 + 120)
            emit(
                {
                    "phase": "ready",
                    **params,
                    "conns": a.conns,
                    **common(ready),
                    "client_cpu_s": round(sum_key(ready, "client_cpu_s"), 3),
                }
            )
            workers.wait(a.hold + 5)
            return 0
        if a.mode == "connect":
            workers.collect("prepared", 300)
            start = time.time() + 0.3
            workers.send(f"go {start} {start} {start}")
            res = workers.collect("result", a.connect_timeout + a.conns / 50 + 60)
            done = max((r.get("t_done") or start) for r in res)
            open_s = done - start
            ok = sum_key(res, "ok")
            cpu = sum_key(res, "client_cpu_s")
            emit(
                {
                    "phase": "result",
                    **params,
                    "conns": a.conns,
                    "concurrency": a.concurrency,
                    **common(res),
                    "open_s": round(open_s, 3),
                    "conn_per_s": round(ok / open_s, 1) if open_s > 0 else None,
                    "t_start": start,
                    "t_done": done,
                    "client_cpu_s": round(cpu, 3),
                    "client_cpu_pct": round(100 * cpu / open_s, 1) if open_s > 0 else None,
                }
            )
            return 0
        total = a.conns if a.mode == "ping" else a.agents + a.dashboards
        ready = workers.collect("ready", a.connect_timeout + total / 50 + 120)
        emit({"phase": "ready", **params, **common(ready)})
        if any(r.get("error") for r in ready):
            emit({"phase": "result", **params, "error": "worker failed before the window", **common(ready)})
            return 1
        start = time.time() + 0.5
        m0, m1 = start + a.warmup, start + a.warmup + a.duration
        workers.send(f"go {start} {m0} {m1}")
        emit({"phase": "window", "start": start, "m0": m0, "m1": m1})
        res = workers.collect("result", a.warmup + a.duration + a.grace + 60)
        out: dict[str, Any] = {
            "phase": "result",
            **params,
            "duration": a.duration,
            "warmup": a.warmup,
            **common(res),
            **traffic(res, a.duration),
        }
        out["window_errors"] = [r["window_error"] for r in res if r.get("window_error")]
        if a.mode == "ping":
            h = merge_hist([r.get("hist", "") for r in res])
            out.update(
                {
                    "conns": a.conns,
                    "window": a.window,
                    "loop": res[0].get("loop"),
                    "round_trips_per_s": round(h.get_total_count() / a.duration, 1),
                    "rtt": summarize(h),
                }
            )
        else:
            sent: dict[str, int] = {}
            for r in res:
                for c, v in (r.get("sent_by_company") or {}).items():
                    sent[c] = sent.get(c, 0) + v
            dash_companies = [c for r in res for c in r.get("dash_companies") or []]
            out.update(
                {
                    "agents": a.agents,
                    "dashboards": a.dashboards,
                    "companies": a.companies,
                    "interval": a.interval,
                    "payload_bytes": a.payload_bytes,
                    "status_sent": sum(sent.values()),
                    "status_per_s": round(sum(sent.values()) / a.duration, 1),
                    "items_expected": sum(sent.get(str(c), 0) for c in dash_companies),
                    "items_rx": sum_key(res, "items"),
                    "batches_rx": sum_key(res, "batches"),
                    "items_without_ts": sum_key(res, "bad"),
                    "latency_newest": summarize(merge_hist([r.get("hist_newest", "") for r in res])),
                    "latency_oldest": summarize(merge_hist([r.get("hist_oldest", "") for r in res])),
                }
            )
        emit(out)
        return 0
    finally:
        workers.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["idle", "connect", "ping", "load"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sio", action="store_true", help="Socket.IO framing")
    ap.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    ap.add_argument("--auth", choices=["query", "header"], default="query")
    ap.add_argument("--conns", type=int, default=100, help="idle/connect/ping: connections")
    ap.add_argument("--first", type=int, default=0, help="index of the first agent (token sub, printer id)")
    ap.add_argument("--concurrency", type=int, default=500, help="handshakes in flight")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="per handshake")
    ap.add_argument("--hold", type=float, default=60.0, help="idle: seconds to hold the connections")
    ap.add_argument("--epoll", action="store_true", help="ping: tight inlined epoll loop")
    ap.add_argument("--window", type=int, default=1, help="ping: pings in flight per connection")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--grace", type=float, default=1.0, help="load: receive this long after the window")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--dashboards", type=int, default=5)
    ap.add_argument("--first-dashboard", type=int, default=0)
    ap.add_argument("--companies", type=int, default=50)
    ap.add_argument("--interval", type=float, default=1.0, help="load: seconds between an agent's updates")
    ap.add_argument("--payload-bytes", type=int, default=2000, help="load: size of one status message")
    ap.add_argument("--procs", type=int, default=1, help="worker processes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-id", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.duration + a.warmup > MAX_DURATION or a.hold > MAX_HOLD:
        ap.error(f"keep runs bounded: warmup + duration <= {MAX_DURATION:.0f} s, hold <= {MAX_HOLD:.0f} s")
    if a.sio and a.auth == "header":
        ap.error("--auth header is not supported with --sio")
    if a.worker:
        worker_main(a)
        return 0
    a.procs = max(1, a.procs)
    return coordinator(a)


if __name__ == "__main__":
    sys.exit(main())
