#!/usr/bin/env python3
"""Raw-frame load client for printd and its peers (127.0.0.1 only).

It speaks WebSocket itself on non-blocking sockets and one epoll loop per process: the
upgrade request is written by hand, frames are masked with an all-zero key, and the
envelopes are built by bytes formatting. That keeps the client's cost per message far
below the servers' so that, pinned to its own core, it is not the bottleneck. The framing,
the connection loop, the histograms and the worker processes are printctl.loadgen, shared
with `printctl loadtest`; this file adds the benchmark's modes and Socket.IO framing. Every mode
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
           Latency is agent send `ts` -> dashboard receipt of the newest item in each batch;
           when a batch carries `sent_at` (epoch s at the server's batch tick), also the
           server-added latency (tick -> receipt); the items per batch are counted too.
Options for all modes:
  --sio        Socket.IO v5 over Engine.IO v4 framing (GET /socket.io/?EIO=4&transport=websocket,
               '0{..}' open, '40' connect, events as 42["name",{...}], '2' answered with '3')
  --deflate    offer permessage-deflate (client_max_window_bits=10, no context takeover both ways);
               if accepted, outgoing messages >= 1 KiB are compressed, incoming RSV1 frames inflated
  --auth       query (?token=, default) or header (Authorization: Bearer; not with --sio)
  --procs P    split the connections over P worker processes (the fd limit is per process)
  --ports LIST worker i connects to port LIST[i % len(LIST)] (several instances of a cluster)
Bytes are counted both on the wire (what send()/recv() moved) and as application payload
(uncompressed message bodies); counters cover the measurement window.

Process layout: this process is the coordinator; it starts P workers (this file with --worker),
lets them connect, tells them when the window starts ("go" line on their stdin) and merges their
results. Lines it prints: {"phase":"ready",...} once every connection is open (idle: then holds),
{"phase":"window",...} with the epoch times of the measurement window, {"phase":"result",...}.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from array import array
from typing import Any

import jwt
import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from printctl.loadgen.client import HELLO, OPEN, RECV_SIZE, SUBPROTOCOL, Client, Conn, Counters  # noqa: E402
from printctl.loadgen.frames import (  # noqa: E402
    MASK,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
    parse_frames,
    upgrade_request,
)
from printctl.loadgen.payloads import status_fields  # noqa: E402
from printctl.loadgen.plan import split  # noqa: E402
from printctl.loadgen.stats import cpu_seconds, encode, histogram, merge, raise_nofile, summarize  # noqa: E402
from printctl.loadgen.target import parse_target  # noqa: E402
from printctl.loadgen.workers import Workers, emit  # noqa: E402

HOST = "127.0.0.1"
MAX_DURATION = 600.0
MAX_HOLD = 3600.0


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


class BenchClient(Client):
    """The shared epoll client (printctl.loadgen), plus Socket.IO v5 over Engine.IO v4 framing for
    the Node peer (--sio): '0{..}' open, '40' connect, then events as 42["name",{...}]."""

    def __init__(self, a: argparse.Namespace, proto: Protocol) -> None:
        target = parse_target(f"http://{HOST}:{a.port}")
        super().__init__(target, deflate=a.deflate, auth=a.auth, control=sys.stdin.fileno())
        self.proto = proto

    def request_for(self, token: str) -> bytes:
        if not self.proto.sio:
            return super().request_for(token)
        path = f"/socket.io/?EIO=4&transport=websocket&token={token}"
        return upgrade_request(self.target.host_header, path, deflate=self.deflate)

    def _upgraded(self, conn: Conn) -> None:
        if not self.proto.sio:
            super()._upgraded(conn)
            return
        conn.state, conn.sub = SUBPROTOCOL, 0

    def _handshake_message(self, conn: Conn, payload: bytes) -> None:
        if not self.proto.sio:
            super()._handshake_message(conn, payload)
        elif conn.state == SUBPROTOCOL and conn.sub == 0:
            if payload[:1] == b"0":
                conn.sub = 1
                self.send_message(conn, b"40")
        elif conn.state == SUBPROTOCOL:
            if payload[:2] == b"40":
                conn.state = HELLO
            elif payload[:2] == b"44":
                self.fail(conn, "socket.io connect_error")
        elif payload[:2] != b"42":
            self._engineio(conn, payload)
        elif self.proto.decode(payload)[0] == "hello":
            self._opened(conn)

    def _deliver(self, conn: Conn, payload: bytes) -> None:
        if self.proto.sio and payload[:2] != b"42":
            self._engineio(conn, payload)
        else:
            self.on_message(conn, payload)

    def _engineio(self, conn: Conn, payload: bytes) -> None:
        if payload == b"2":
            self.send_raw(conn, encode_frame(b"3"))
        elif payload[:2] in (b"41", b"1"):
            self.fail(conn, "socket.io disconnect")


def wait_go(client: Client, deadline: float) -> tuple[float, float, float] | None:
    """Service the sockets until the coordinator's 'go START M0 M1' line (epoch seconds)."""
    line = client.next_line(deadline)
    if line is None:
        return None
    _, start, m0, m1 = line.split()
    return float(start), float(m0), float(m1)


# ------------------------------------------------------------------------------------------ worker modes

Spec = tuple[bytes, str, int, int]  # upgrade request, kind, index, company


def agent_specs(client: BenchClient, a: argparse.Namespace, first: int, n: int) -> list[Spec]:
    return [
        (client.request_for(mint(agent_claims(i, a.companies), a.secret)), "agent", i, i % a.companies)
        for i in range(first, first + n)
    ]


def dashboard_specs(client: BenchClient, a: argparse.Namespace, first: int, n: int) -> list[Spec]:
    return [
        (
            client.request_for(mint(dashboard_claims(d, a.companies), a.secret)),
            "dashboard",
            d,
            d % a.companies,
        )
        for d in range(first, first + n)
    ]


def base_result(client: BenchClient, opened: list[Conn], open_s: float) -> dict[str, Any]:
    return {
        "ok": len(opened),
        "fail": sum(v for k, v in client.errors.items() if not k.startswith("lost")),
        "errors": client.errors,
        "open_s": round(open_s, 3),
        "deflate_accepted": client.deflate_accepted,
    }


def worker_idle(client: BenchClient, a: argparse.Namespace) -> None:
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
    end = time.time() + a.hold
    while time.time() < end and not client.control_eof:
        client.poll(min(0.2, end - time.time()))


def worker_connect(client: BenchClient, a: argparse.Namespace) -> None:
    specs = agent_specs(client, a, a.first, a.conns)
    emit({"phase": "prepared"})
    go = wait_go(client, time.time() + 120)
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

    def __init__(self, client: BenchClient, m0: float, m1: float) -> None:
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


def worker_ping(client: BenchClient, a: argparse.Namespace) -> None:
    specs = agent_specs(client, a, a.first, a.conns)
    opened, open_s = client.open_all(specs, a.concurrency, a.connect_timeout)
    emit({"phase": "ready", **base_result(client, opened, open_s)})
    go = wait_go(client, time.time() + 120)
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
            "hist": encode(histogram(lat)),
        }
    )
    client.close_all()


def generic_ping_loop(
    client: BenchClient, opened: list[Conn], a: argparse.Namespace, win: Window, lat: array
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
    client: BenchClient, opened: list[Conn], a: argparse.Namespace, win: Window, lat: array
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
                    client.error("lost during ping")
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


def worker_load(client: BenchClient, a: argparse.Namespace) -> None:
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
    go = wait_go(client, time.time() + 120)
    if go is None:
        return
    start, m0, m1 = go
    win = Window(client, m0, m1)
    lat_newest, lat_oldest, lat_server = array("d"), array("d"), array("d")
    st = {"batches": 0, "items": 0, "snapshots": 0, "bad": 0}
    batch_sizes: dict[int, int] = {}
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
        batch_sizes[len(items)] = batch_sizes.get(len(items), 0) + 1
        sent_at = data.get("sent_at")
        if isinstance(sent_at, float):
            lat_server.append(now - sent_at)
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
        if now >= t_end or client.control_eof:
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
            "hist_newest": encode(histogram(lat_newest)),
            "hist_oldest": encode(histogram(lat_oldest)),
            "hist_server": encode(histogram(lat_server)),
            "batch_sizes": {str(k): v for k, v in batch_sizes.items()},
        }
    )
    client.close_all()


def worker_main(a: argparse.Namespace) -> None:
    a.secret = os.environ.get("JWT_SECRET") or sys.exit("JWT_SECRET is not set")
    raise_nofile(a.conns if a.mode != "load" else a.agents + a.dashboards)
    client = BenchClient(a, Protocol(a.sio))
    modes = {"idle": worker_idle, "connect": worker_connect, "ping": worker_ping, "load": worker_load}
    modes[a.mode](client, a)


def worker_args(a: argparse.Namespace, i: int) -> list[str]:
    args = [
        "--port",
        str(a.ports[i % len(a.ports)] if a.ports else a.port),
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


def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


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
    script = os.path.abspath(__file__)
    workers = Workers(
        [
            [sys.executable, script, a.mode, "--worker", "--worker-id", str(i), *worker_args(a, i)]
            for i in range(a.procs)
        ]
    )
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
            h = merge([r.get("hist", "") for r in res])
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
                    "latency_newest": summarize(merge([r.get("hist_newest", "") for r in res])),
                    "latency_oldest": summarize(merge([r.get("hist_oldest", "") for r in res])),
                    "latency_server_added": summarize(merge([r.get("hist_server", "") for r in res])),
                    "batch_sizes": merge_counts([r.get("batch_sizes") or {} for r in res]),
                }
            )
        emit(out)
        return 0
    finally:
        workers.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["idle", "connect", "ping", "load"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ports", default="", help="comma list: worker i connects to port i % len")
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
    a.ports = [int(p) for p in a.ports.split(",") if p.strip()]
    if not a.port and not a.ports:
        ap.error("give --port or --ports")
    if a.worker:
        worker_main(a)
        return 0
    a.procs = max(1, a.procs)
    return coordinator(a)


if __name__ == "__main__":
    sys.exit(main())
