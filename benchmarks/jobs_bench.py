"""Job pipeline benchmark: round trip, one agent's throughput, fleet-health cache; --runs times each,
median and spread, with the machine's background load beside each figure.

    python benchmarks/jobs_bench.py --backend sqlite,postgres --rate 100 --duration 10 --clients 16
    python benchmarks/jobs_bench.py --backend sqlite,postgres --agents 50 --rate 500 --measures rtt
    python benchmarks/jobs_bench.py --backend sqlite,postgres --dinner-rush

Every run starts a real printd (pinned to CPU0) on a fresh data directory (SQLite) or a fresh schema
(PostgreSQL), and on CPU1 --agents in-process agents (agent i holds printer p<i>) that ack and answer
every dispatch at once, a dashboard that timestamps `job.completed`, and keep-alive HTTP clients:

- rtt: open loop at --rate jobs/s in total (or one job per agent every --job-interval s), the jobs
  going to the agents' printers in turn; after a --warmup, the jobs due in the --duration window
  count. Round trip = when the job was due -> `job.completed` at the dashboard (HTTP accept ->
  store -> agent -> result -> store -> push), so a client falling behind counts against the figure.
  With --status-interval S every agent also sends a `printer.status` every S s (random phase).
  Beside it: printd's CPU, its PostgreSQL backends' CPU, this client's CPU, over the window;
- throughput: --clients closed-loop submitters for --duration s, every job for agent 0's printer
  (one agent: its acks and results are handled in order on its connection); completed jobs/s;
- drain: one agent's pipeline alone: --drain jobs accepted while the agent is away, then it
  connects; completed/s from its connect to the last `job.completed` (no HTTP in the loop);
- fleet: GET /api/v1/fleet/health latency on a warm cache, and on a second printd with the cache
  effectively off (ttl 1 ms).

--dinner-rush is issue 13's case 5: --agents 1000, one job per agent every 10 s, a status every 5 s,
rtt only. Before each run the harness waits for idle cores (--quiet-wait); a run in which other
work used more than --max-foreign % CPU is repeated (--retries). One JSON line per measurement and
run goes to benchmarks/results/jobs.jsonl; the tables (median (min–max) over the runs) to stdout
and --markdown PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
import trio
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchstats import Background, background_cell, cpu_seconds, pg_backends, spread, wait_quiet  # noqa: E402

from printctl.wsclient import WsClient, ws_url  # noqa: E402
from printd.auth import mint_token  # noqa: E402

SECRET = "benchmark-secret-0123456789abcdef0123456789"
RESULTS = ROOT / "benchmarks" / "results"
PG_PORT = 5432
COMPANY = "bench"
MEASURES = ("rtt", "throughput", "drain", "fleet")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpConn:
    """A minimal keep-alive HTTP/1.1 client (the load tool must not be the bottleneck). A connection
    the server closed (printd closes one that sends no request within its handshake timeout) is
    opened again and the request sent once more; a POST carries an Idempotency-Key, so the job is
    created once either way. `reopened` counts those."""

    reopened = 0

    def __init__(self, port: int, stream: trio.SocketStream) -> None:
        self.port = port
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, port: int) -> HttpConn:
        return cls(port, await trio.open_tcp_stream("127.0.0.1", port))

    async def _recv(self) -> bytes:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the server closed the connection")
        return data

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        key = f"Idempotency-Key: {uuid.uuid4().hex}\r\n" if method == "POST" else ""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{key}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            try:
                return await self._exchange(head + body)
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                if attempt == 2:
                    raise
                await self.stream.aclose()
                self.stream, self.buf = await trio.open_tcp_stream("127.0.0.1", self.port), b""
                HttpConn.reopened += 1
        raise AssertionError("unreachable")

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        await self.stream.send_all(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self._recv()
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += await self._recv()
        self.buf = rest[length:]
        return status, rest[:length]


def start_printd(port: int, data_dir: Path, env: dict[str, str], config: str = "") -> subprocess.Popen[bytes]:
    cfg = data_dir / "printd.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\nlog_level = "warning"\n[server]\nport = {port}\n{config}')
    e = {**os.environ, "JWT_SECRET": SECRET, **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "printd", "run", "--config", str(cfg)],
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "printd.log", "wb"),
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    import httpx

    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/monitoring/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError((data_dir / "printd.log").read_text())


def percentiles(h: HdrHistogram) -> dict[str, float]:
    return {
        "n": h.get_total_count(),
        "p50_ms": h.get_value_at_percentile(50) / 1000,
        "p99_ms": h.get_value_at_percentile(99) / 1000,
        "max_ms": h.get_max_value() / 1000,
    }


def histogram(seconds: list[float]) -> HdrHistogram:
    h = HdrHistogram(1, 60_000_000, 3)
    for s in seconds:
        h.record_value(max(1, int(s * 1e6)))
    return h


class Meter:
    """printd's CPU, its PostgreSQL backends' CPU, this process's CPU and the machine's background
    over one window. The psutil scans run in a thread, so the trio loop is not held up by them."""

    def __init__(self, printd: subprocess.Popen[bytes], port: int) -> None:
        self.printd = psutil.Process(printd.pid)
        self.port = port

    def _group_commit(self) -> tuple[float, float]:
        """printd's (group commits, grouped writes) counters, from its Prometheus metrics."""
        admin = mint_token(SECRET, role="admin", company="*", sub="bench")
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/monitoring/metrics", headers={"Authorization": f"Bearer {admin}"}
        )
        found = {}
        with urllib.request.urlopen(req, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in ("printd_store_group_commits_total", "printd_store_grouped_writes_total"):
                    found[name] = float(value)
        return found["printd_store_group_commits_total"], found["printd_store_grouped_writes_total"]

    def _start(self) -> None:
        self.groups0 = self._group_commit()
        self.db = pg_backends([self.printd], PG_PORT)
        self.bg = Background(self.printd.pid, extra=self.db)
        self.cpu0, self.db0 = cpu_seconds({self.printd.pid}), cpu_seconds(self.db)

    def _end(self) -> dict[str, Any]:
        dt = max(1e-6, time.time() - self.bg.t0)
        server = 100 * (cpu_seconds({self.printd.pid}) - self.cpu0) / dt
        # printd's pool may open connections during the window: their backends are ours too (all
        # of a new backend's CPU falls in the window), not other work
        new = pg_backends([self.printd], PG_PORT) - self.db
        self.bg.foreign.extra |= new
        db = 100 * (cpu_seconds(self.db) - self.db0 + cpu_seconds(new)) / dt
        client = self.bg.self_pct()
        commits, writes = (b - a for a, b in zip(self.groups0, self._group_commit(), strict=True))
        return {
            "writes_per_commit": round(writes / commits, 2) if commits else None,
            "window_s": round(dt, 2),
            "server_cpu_pct": round(server, 1),
            "db_cpu_pct": round(db, 1),
            "client_cpu_pct": round(client, 1),
            "background": self.bg.end(own_pct=server + db + client),
        }

    async def start(self) -> None:
        await trio.to_thread.run_sync(self._start)

    async def end(self) -> dict[str, Any]:
        return await trio.to_thread.run_sync(self._end)


async def bench(args: argparse.Namespace, port: int, printd: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}"
    dash_tok = mint_token(SECRET, role="dashboard", company=COMPANY, sub="dash-1")
    svc = mint_token(SECRET, role="service", company=COMPANY, sub="pos-1")
    completed: dict[str, float] = {}
    out: list[dict[str, Any]] = []
    meter = Meter(printd, port)
    agents: list[WsClient] = [None] * args.agents  # type: ignore[list-item]
    statuses = {"sent": 0}

    async def connect_agent(i: int, limit: trio.CapacityLimiter) -> None:
        async with limit:
            tok = mint_token(SECRET, role="agent", company=COMPANY, branch=f"b{i % 50}", sub=f"agent-{i}")
            ws = await WsClient.connect(ws_url(url), token=tok, deflate=False, timeout=30)
            await ws.send("printer.status", {"printer_id": f"p{i}", "status": "online"}, id=1)
            await ws.recv_event("ack", timeout=30)
            agents[i] = ws

    async def run_agent(ws: WsClient) -> None:
        while True:
            msg = await ws.recv()
            if msg["event"] != "job.dispatch":
                continue
            d = msg["data"]
            ids = {"job_id": d["job_id"], "correlation_id": d["correlation_id"]}
            ws.proto.send_text(orjson.dumps({"event": "job.ack", "data": ids}))
            ws.proto.send_text(
                orjson.dumps({"event": "job.result", "data": {**ids, "success": True, "message": "ok"}})
            )
            await ws._flush()

    async def run_status(i: int, ws: WsClient) -> None:
        await trio.sleep(random.random() * args.status_interval)
        while True:
            await ws.send("printer.status", {"printer_id": f"p{i}", "status": "online", "paper": "ok"})
            statuses["sent"] += 1
            await trio.sleep(args.status_interval)

    dash = await WsClient.connect(ws_url(url), token=dash_tok, deflate=False)

    async def run_dash() -> None:
        while True:
            msg = await dash.recv()
            if msg["event"] == "job.completed":
                completed[msg["data"]["job_id"]] = time.perf_counter()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_dash)
        t_conn = time.perf_counter()
        async with trio.open_nursery() as connecting:
            limit = trio.CapacityLimiter(50)
            for i in range(args.agents):
                connecting.start_soon(connect_agent, i, limit)
        connect_s = time.perf_counter() - t_conn
        for i, ws in enumerate(agents):
            nursery.start_soon(run_agent, ws)
            if args.status_interval:
                nursery.start_soon(run_status, i, ws)
        conns = [await HttpConn.open(port) for _ in range(max(args.clients, 8))]

        if "rtt" in args.measure_list:
            # 1. round trip, open loop: job k is due at t0 + k / rate, for printer p<k % agents>
            sent: dict[str, float] = {}
            accept: list[float] = []
            failed = {"n": 0}
            pool = list(conns)
            free = trio.Semaphore(len(conns))
            in_window: list[bool] = []

            async def fire(due: float, printer: str, counted: bool) -> None:
                body = orjson.dumps({"printer_id": printer, "payload": {"text": "2x burger", "table": 4}})
                async with free:
                    conn = pool.pop(0)  # round robin: every connection stays in use
                    try:
                        status, resp = await conn.request("POST", "/api/v1/jobs", svc, body)
                    finally:
                        pool.append(conn)
                if status == 202:
                    if counted:
                        sent[orjson.loads(resp)["job_id"]] = due
                        accept.append(time.perf_counter() - due)
                elif counted:
                    failed["n"] += 1

            rate = args.agents / args.job_interval if args.job_interval else args.rate
            interval = 1.0 / rate
            start = trio.current_time()
            m0, m1 = start + args.warmup, start + args.warmup + args.duration
            k = 0
            async with trio.open_nursery() as n2:
                metering = False
                while True:
                    due = start + k * interval
                    if due >= m1:
                        break
                    if not metering and due >= m0:
                        status0 = statuses["sent"]
                        n2.start_soon(meter.start)  # beside the firing: it must not delay the jobs due
                        metering = True
                    await trio.sleep_until(due)
                    # the due time on the perf_counter clock (trio's clock is monotonic too)
                    due_pc = time.perf_counter() - (trio.current_time() - due)
                    n2.start_soon(fire, due_pc, f"p{k % args.agents}", due >= m0)
                    in_window.append(due >= m0)
                    k += 1
                await trio.sleep_until(m1)
                meas = await meter.end()
                status_n = statuses["sent"] - status0
            with trio.move_on_after(10):  # the last jobs' completions
                while any(j not in completed for j in sent):  # noqa: ASYNC110 - polls what run_dash fills
                    await trio.sleep(0.05)
            rtts = [completed[j] - due for j, due in sent.items() if j in completed]
            out.append(
                {
                    "measure": "rtt",
                    "agents": args.agents,
                    "rate": round(rate, 1),
                    "status_interval": args.status_interval,
                    "status_per_s": round(status_n / args.duration, 1),
                    "due": sum(in_window),
                    "accepted": len(sent),
                    "refused": failed["n"],
                    "completed": len(rtts),
                    "not_completed": len(sent) - len(rtts),
                    "round_trip": percentiles(histogram(rtts)),
                    "accept": percentiles(histogram(accept)),
                    "connect_s": round(connect_s, 2),
                    "http_reopened": HttpConn.reopened,
                    **meas,
                }
            )

        if "throughput" in args.measure_list:
            # 2. one agent's throughput: closed loop, every client submits as fast as answered
            body = orjson.dumps({"printer_id": "p0", "payload": {"text": "2x burger", "table": 4}})
            sent_t: dict[str, float] = {}
            completed.clear()
            accept_h = HdrHistogram(1, 60_000_000, 3)
            await meter.start()
            stop_at = trio.current_time() + args.duration

            async def closed_loop(conn: HttpConn) -> None:
                while trio.current_time() < stop_at:
                    t0 = time.perf_counter()
                    status, resp = await conn.request("POST", "/api/v1/jobs", svc, body)
                    if status == 202:
                        sent_t[orjson.loads(resp)["job_id"]] = t0
                        accept_h.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))

            t_start = time.perf_counter()
            async with trio.open_nursery() as n3:
                for conn in conns[: args.clients]:
                    n3.start_soon(closed_loop, conn)
            t_sent = time.perf_counter()
            with trio.move_on_after(30):
                while len(completed) < len(sent_t):  # noqa: ASYNC110 - polls what run_dash fills
                    await trio.sleep(0.05)
            meas = await meter.end()
            t_done = max(completed.values()) if completed else t_sent
            out.append(
                {
                    "measure": "throughput",
                    "clients": args.clients,
                    "accepted": len(sent_t),
                    "completed": len(completed),
                    "accepted_per_s": round(len(sent_t) / (t_sent - t_start), 1),
                    "completed_per_s": round(len(completed) / (t_done - t_start), 1),
                    "accept_latency": percentiles(accept_h),
                    **meas,
                }
            )

        if "drain" in args.measure_list:
            # 3. one agent's pipeline alone: --drain jobs accepted while it is away, then it
            # connects; completed/s = jobs / (connect -> the last job.completed). No HTTP in the loop.
            tok = mint_token(SECRET, role="agent", company=COMPANY, branch="b0", sub="agent-drain")
            ws = await WsClient.connect(ws_url(url), token=tok, deflate=False, timeout=30)
            await ws.send("printer.status", {"printer_id": "pd", "status": "online"}, id=1)
            await ws.recv_event("ack", timeout=30)
            await ws.close()
            body = orjson.dumps({"printer_id": "pd", "payload": {"text": "2x burger", "table": 4}})
            backlog: set[str] = set()

            async def submit_some(conn: HttpConn, n: int) -> None:
                for _ in range(n):
                    status, resp = await conn.request("POST", "/api/v1/jobs", svc, body)
                    if status == 202:
                        backlog.add(orjson.loads(resp)["job_id"])

            async with trio.open_nursery() as n4:
                for conn in conns[:8]:
                    n4.start_soon(submit_some, conn, args.drain // 8)
            completed.clear()
            await meter.start()
            t_start = time.perf_counter()
            ws = await WsClient.connect(ws_url(url), token=tok, deflate=False, timeout=30)
            nursery.start_soon(run_agent, ws)
            with trio.move_on_after(120):
                while not backlog <= completed.keys():  # noqa: ASYNC110 - polls what run_dash fills
                    await trio.sleep(0.01)
            meas = await meter.end()
            done = [completed[j] for j in backlog if j in completed]
            t_done = max(done) if done else time.perf_counter()
            out.append(
                {
                    "measure": "drain",
                    "jobs": len(backlog),
                    "completed": len(done),
                    "completed_per_s": round(len(done) / (t_done - t_start), 1),
                    **meas,
                }
            )

        if "fleet" in args.measure_list:
            # 4. fleet/health on a warm cache
            conn = conns[0]
            await conn.request("GET", "/api/v1/fleet/health", svc)
            h = HdrHistogram(1, 60_000_000, 3)
            cached_flags = set()
            await meter.start()
            for _ in range(2000):
                t0 = time.perf_counter()
                status, resp = await conn.request("GET", "/api/v1/fleet/health", svc)
                h.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                cached_flags.add(orjson.loads(resp)["cached"])
            meas = await meter.end()
            out.append(
                {
                    "measure": "fleet_health_cached",
                    "all_cached": cached_flags == {True},
                    "latency": percentiles(h),
                    **meas,
                }
            )
        nursery.cancel_scope.cancel()
    return out


async def fleet_uncached(port: int) -> dict[str, Any]:
    svc = mint_token(SECRET, role="service", company=COMPANY, sub="pos-1")
    conn = await HttpConn.open(port)
    h = HdrHistogram(1, 60_000_000, 3)
    flags = set()
    for _ in range(300):
        t0 = time.perf_counter()
        _, resp = await conn.request("GET", "/api/v1/fleet/health", svc)
        h.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
        flags.add(orjson.loads(resp)["cached"])
        await trio.sleep(0.002)  # let the tiny TTL expire
    return {"measure": "fleet_health_uncached", "none_cached": flags == {False}, "latency": percentiles(h)}


def one_run(args: argparse.Namespace, backend: str) -> list[dict[str, Any]]:
    """A fresh printd (and schema) for every run."""
    env: dict[str, str] = {}
    schema = None
    if backend == "postgres":
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.pg_url, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {schema}")
        env["DATABASE_URL"] = f"{args.pg_url}?options=-csearch_path%3D{schema}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            port = free_port()
            procs.append(start_printd(port, Path(d), env))
            results = trio.run(bench, args, port, procs[-1])
            procs[-1].send_signal(signal.SIGTERM)
            procs[-1].wait(15)
            if "fleet" in args.measure_list:  # the same fleet query with the cache effectively off
                port2 = free_port()
                d2 = Path(d) / "uncached"
                d2.mkdir()
                procs.append(start_printd(port2, d2, env, "[health]\nfleet_cache_ttl = 0.001\n"))
                results.append(trio.run(fleet_uncached, port2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(15)
        if schema:
            import psycopg

            with psycopg.connect(args.pg_url, autocommit=True) as c:
                c.execute(f"DROP SCHEMA {schema} CASCADE")
    return results


def disturbance(results: list[dict[str, Any]]) -> float:
    """The most CPU other work used in any window of a run (% of one core)."""
    worst = 0.0
    for r in results:
        bg = r.get("background") or {}
        worst = max(worst, bg.get("other_busy_pct", 0.0), bg.get("foreign_cpu_pct", 0.0))
    return worst


# ------------------------------------------------------------------------------------------ tables


def fig(rec: dict[str, Any], path: str) -> Any:
    node: Any = rec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(records: list[dict[str, Any]]) -> str:
    """One row per backend and case; every figure `median (min–max)` over the runs."""

    def cell(rs: list[dict[str, Any]], path: str, nd: int = 1) -> str:
        return spread([fig(r, path) for r in rs], nd, "()")

    def bg(rs: list[dict[str, Any]]) -> str:
        return background_cell([r.get("background") or {} for r in rs], "()")

    def metered(backend: str, rs: list[dict[str, Any]]) -> list[str]:
        """Writes per transaction, printd's, PostgreSQL's and the client's CPU, the background."""
        db = cell(rs, "db_cpu_pct") if backend == "postgres" else "–"
        cpu = [cell(rs, "server_cpu_pct"), db, cell(rs, "client_cpu_pct")]
        return [cell(rs, "writes_per_commit", 2), *cpu, bg(rs)]

    parts = []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        key = (r["measure"], r["backend"], r.get("agents"), r.get("rate"), r.get("status_interval"))
        groups.setdefault(key, []).append(r)
    rtt = [(k, rs) for k, rs in groups.items() if k[0] == "rtt"]
    if rtt:
        head = ["backend", "agents", "jobs/s", "status/s", "runs", "round trip p50 ms", "p99 ms", "max ms"]
        head += ["completed / due", "writes per transaction", "printd CPU %", "PostgreSQL CPU %"]
        head += ["client CPU %", "background"]
        rows = [
            [
                k[1],
                str(k[2]),
                f"{k[3]:g}",
                cell(rs, "status_per_s", 0),
                str(len(rs)),
                cell(rs, "round_trip.p50_ms", 2),
                cell(rs, "round_trip.p99_ms", 2),
                cell(rs, "round_trip.max_ms"),
                f"{cell(rs, 'completed', 0)} / {cell(rs, 'due', 0)}",
                *metered(k[1], rs),
            ]
            for k, rs in rtt
        ]
        parts.append("### Job round trip (due -> job.completed at the dashboard)\n\n" + table(head, rows))
    tput = [(k, rs) for k, rs in groups.items() if k[0] == "throughput"]
    if tput:
        head = ["backend", "runs", "completed/s, one agent", "accepted/s", "accept p50 ms", "accept p99 ms"]
        head += ["writes per transaction", "printd CPU %", "PostgreSQL CPU %", "client CPU %", "background"]
        rows = [
            [
                k[1],
                str(len(rs)),
                cell(rs, "completed_per_s", 0),
                cell(rs, "accepted_per_s", 0),
                cell(rs, "accept_latency.p50_ms", 2),
                cell(rs, "accept_latency.p99_ms", 2),
                *metered(k[1], rs),
            ]
            for k, rs in tput
        ]
        clients = sorted({str(r.get("clients")) for _, rs in tput for r in rs})
        title = f"### One agent's throughput ({', '.join(clients)} closed-loop clients)"
        parts.append(title + "\n\n" + table(head, rows))
    drain = [(k, rs) for k, rs in groups.items() if k[0] == "drain"]
    if drain:
        head = ["backend", "runs", "jobs", "completed/s, one agent", "writes per transaction"]
        head += ["printd CPU %", "PostgreSQL CPU %", "client CPU %", "background"]
        rows = [
            [
                k[1],
                str(len(rs)),
                cell(rs, "jobs", 0),
                cell(rs, "completed_per_s", 0),
                *metered(k[1], rs),
            ]
            for k, rs in drain
        ]
        title = "### One agent's pipeline alone (a backlog accepted while it was away, then it connects)"
        parts.append(title + "\n\n" + table(head, rows))
    fleet = [(k, rs) for k, rs in groups.items() if k[0].startswith("fleet")]
    if fleet:
        head = ["backend", "cache", "runs", "p50 ms", "p99 ms", "max ms"]
        rows = [
            [
                k[1],
                "warm" if k[0].endswith("_cached") else "off (ttl 1 ms)",
                str(len(rs)),
                cell(rs, "latency.p50_ms", 2),
                cell(rs, "latency.p99_ms", 2),
                cell(rs, "latency.max_ms", 2),
            ]
            for k, rs in fleet
        ]
        parts.append("### GET /api/v1/fleet/health (keep-alive client)\n\n" + table(head, rows))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sqlite", help="sqlite, postgres or both (comma list)")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--runs", type=int, default=3, help="repeat every measurement; median (min–max)")
    ap.add_argument("--measures", default=",".join(MEASURES), help="comma list of " + ",".join(MEASURES))
    ap.add_argument("--agents", type=int, default=1, help="rtt: agents (agent i holds printer p<i>)")
    ap.add_argument("--rate", type=float, default=100.0, help="rtt: jobs/s over all agents")
    ap.add_argument("--job-interval", type=float, default=0.0, help="rtt: one job per agent every S s")
    ap.add_argument("--status-interval", type=float, default=0.0, help="a status per agent every S s")
    ap.add_argument("--warmup", type=float, default=2.0, help="rtt: s before the window")
    ap.add_argument("--duration", type=float, default=10.0, help="rtt window; throughput run")
    ap.add_argument("--clients", type=int, default=16, help="throughput: closed-loop HTTP clients")
    ap.add_argument("--drain", type=int, default=4000, help="drain: jobs waiting when the agent connects")
    ap.add_argument(
        "--dinner-rush",
        action="store_true",
        help="issue 13 case 5: --agents 1000 --job-interval 10 --status-interval 5 --measures rtt",
    )
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this long for idle cores")
    ap.add_argument("--quiet-busy", type=float, default=15.0, help="busy %% per CPU that counts as idle")
    ap.add_argument("--max-foreign", type=float, default=10.0, help="repeat a run when other work used more")
    ap.add_argument("--retries", type=int, default=2, help="repeats allowed per disturbed run")
    ap.add_argument("--markdown", metavar="PATH", help="also write the tables to this file")
    args = ap.parse_args()
    if args.dinner_rush:
        args.agents, args.job_interval, args.status_interval, args.measures = 1000, 10.0, 5.0, "rtt"
        args.duration = max(args.duration, 20.0)
        args.warmup = max(args.warmup, 5.0)
    args.measure_list = [m for m in args.measures.split(",") if m]
    backends = [b for b in args.backend.split(",") if b]
    if any(m not in MEASURES for m in args.measure_list) or any(
        b not in ("sqlite", "postgres") for b in backends
    ):
        ap.error(f"--measures from {','.join(MEASURES)}; --backend sqlite and/or postgres")
    rate = args.agents / args.job_interval if args.job_interval else args.rate
    if args.duration + args.warmup > 120 or rate > 5000 or args.agents > 5000:
        ap.error("keep runs bounded: warm-up + duration <= 120 s, at most 5000 jobs/s and 5000 agents")
    os.sched_setaffinity(0, {1})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop printd and drop the schema on the way out
    RESULTS.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    run_id = time.strftime("%Y%m%d-%H%M%S")
    for run in range(args.runs):
        for backend in backends:  # side by side: the backends alternate within each run
            results: list[dict[str, Any]] = []
            for attempt in range(1, args.retries + 2):
                quiet = wait_quiet(args)
                results = one_run(args, backend)
                worst = disturbance(results)
                if worst <= args.max_foreign or attempt > args.retries:
                    break
                print(f"other work used {worst} % CPU during the run: repeating", file=sys.stderr, flush=True)
            with open(RESULTS / "jobs.jsonl", "a") as f:
                for r in results:
                    r.update(
                        {
                            "backend": backend,
                            "run": run,
                            "attempt": attempt,
                            "run_id": run_id,
                            "quiet_before": quiet,
                            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        }
                    )
                    f.write(json.dumps(r) + "\n")
                    print(json.dumps(r), flush=True)
            records += results
    md = markdown(records)
    print("\n" + md)
    if args.markdown:
        Path(args.markdown).write_text(md)


if __name__ == "__main__":
    main()
