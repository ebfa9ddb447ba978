"""Job pipeline benchmark: round trip, sustained throughput, fleet-health cache.

    python benchmarks/jobs_bench.py --backend sqlite --rate 100 --duration 10
    python benchmarks/jobs_bench.py --backend postgres --rate 100 --duration 10

It starts a real printd (pinned to CPU0) on a fresh data directory (SQLite) or a fresh schema
(PostgreSQL), and on CPU1 an in-process agent that acks and answers every dispatch at once,
a dashboard that timestamps `job.completed`, and keep-alive HTTP clients:

- round trip: open loop at --rate jobs/s; time from the POST leaving to `job.completed`
  arriving at the dashboard (HTTP accept -> store -> agent -> result -> store -> push);
- throughput: --clients closed-loop submitters for --duration s; completed jobs per second;
- fleet/health: GET latency on a warm cache vs with the cache disabled (ttl ~0).

Prints one JSON line per measurement and appends them to benchmarks/results/jobs.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import trio
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from printctl.wsclient import WsClient, ws_url  # noqa: E402
from printd.auth import mint_token  # noqa: E402

SECRET = "benchmark-secret-0123456789abcdef0123456789"
RESULTS = ROOT / "benchmarks" / "results"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpConn:
    """A minimal keep-alive HTTP/1.1 client (the load tool must not be the bottleneck)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, port: int) -> HttpConn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        await self.stream.send_all(head + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self.stream.receive_some(65536)
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += await self.stream.receive_some(65536)
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


async def bench(args: argparse.Namespace, port: int) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}"
    company = "bench"
    agent_tok = mint_token(SECRET, role="agent", company=company, branch="b1", sub="agent-1")
    dash_tok = mint_token(SECRET, role="dashboard", company=company, sub="dash-1")
    svc = mint_token(SECRET, role="service", company=company, sub="pos-1")
    completed: dict[str, float] = {}
    sent: dict[str, float] = {}
    out: list[dict[str, Any]] = []
    agent = await WsClient.connect(ws_url(url), token=agent_tok, deflate=False)
    dash = await WsClient.connect(ws_url(url), token=dash_tok, deflate=False)
    await agent.send("printer.status", {"printer_id": "p1", "status": "online"}, id=1)

    async def run_agent() -> None:
        while True:
            msg = await agent.recv()
            if msg["event"] != "job.dispatch":
                continue
            d = msg["data"]
            ids = {"job_id": d["job_id"], "correlation_id": d["correlation_id"]}
            agent.proto.send_text(orjson.dumps({"event": "job.ack", "data": ids}))
            agent.proto.send_text(
                orjson.dumps({"event": "job.result", "data": {**ids, "success": True, "message": "ok"}})
            )
            await agent._flush()

    async def run_dash() -> None:
        while True:
            msg = await dash.recv()
            if msg["event"] == "job.completed":
                completed[msg["data"]["job_id"]] = time.perf_counter()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_agent)
        nursery.start_soon(run_dash)
        await trio.sleep(0.5)
        conns = [await HttpConn.open(port) for _ in range(max(args.clients, 8))]
        body = orjson.dumps({"printer_id": "p1", "payload": {"text": "2x burger", "table": 4}})

        # 1. round trip at a fixed rate (open loop over 8 keep-alive connections)
        async def submit_one(conn: HttpConn) -> None:
            t0 = time.perf_counter()
            status, resp = await conn.request("POST", "/api/v1/jobs", svc, body)
            if status == 202:
                sent[orjson.loads(resp)["job_id"]] = t0

        free = trio.Semaphore(len(conns))
        pool = list(conns)

        async def fire() -> None:
            async with free:
                conn = pool.pop()
                try:
                    await submit_one(conn)
                finally:
                    pool.append(conn)

        interval = 1.0 / args.rate
        nxt = trio.current_time()
        end = nxt + args.duration
        async with trio.open_nursery() as n2:
            while nxt < end:
                await trio.sleep_until(nxt)
                n2.start_soon(fire)
                nxt += interval
        await trio.sleep(2.0)
        h = HdrHistogram(1, 60_000_000, 3)
        for job_id, t0 in sent.items():
            if job_id in completed:
                h.record_value(max(1, int((completed[job_id] - t0) * 1e6)))
        out.append(
            {
                "measure": "round_trip",
                "rate": args.rate,
                "submitted": len(sent),
                "completed": h.get_total_count(),
                **percentiles(h),
            }
        )

        # 2. sustained throughput: closed loop, every client submits as fast as answered
        sent.clear()
        completed.clear()
        stop_at = trio.current_time() + args.duration
        accept = HdrHistogram(1, 60_000_000, 3)

        async def closed_loop(conn: HttpConn) -> None:
            while trio.current_time() < stop_at:
                t0 = time.perf_counter()
                status, resp = await conn.request("POST", "/api/v1/jobs", svc, body)
                if status == 202:
                    sent[orjson.loads(resp)["job_id"]] = t0
                    accept.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))

        t_start = time.perf_counter()
        async with trio.open_nursery() as n3:
            for conn in conns[: args.clients]:
                n3.start_soon(closed_loop, conn)
        t_sent = time.perf_counter()
        with trio.move_on_after(30):
            while len(completed) < len(sent):  # noqa: ASYNC110 - polls a dict the dashboard task fills
                await trio.sleep(0.05)
        t_done = max(completed.values()) if completed else t_sent
        out.append(
            {
                "measure": "throughput",
                "clients": args.clients,
                "accepted": len(sent),
                "completed": len(completed),
                "accepted_per_s": round(len(sent) / (t_sent - t_start), 1),
                "completed_per_s": round(len(completed) / (t_done - t_start), 1),
                "accept_latency": percentiles(accept),
            }
        )

        # 3. fleet/health on a warm cache
        conn = conns[0]
        await conn.request("GET", "/api/v1/fleet/health", svc)
        h = HdrHistogram(1, 60_000_000, 3)
        cached_flags = set()
        for _ in range(2000):
            t0 = time.perf_counter()
            status, resp = await conn.request("GET", "/api/v1/fleet/health", svc)
            h.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
            cached_flags.add(orjson.loads(resp)["cached"])
        out.append({"measure": "fleet_health_cached", "all_cached": cached_flags == {True}, **percentiles(h)})
        nursery.cancel_scope.cancel()
    return out


async def fleet_uncached(port: int) -> dict[str, Any]:
    svc = mint_token(SECRET, role="service", company="bench", sub="pos-1")
    conn = await HttpConn.open(port)
    h = HdrHistogram(1, 60_000_000, 3)
    flags = set()
    for _ in range(300):
        t0 = time.perf_counter()
        _, resp = await conn.request("GET", "/api/v1/fleet/health", svc)
        h.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
        flags.add(orjson.loads(resp)["cached"])
        await trio.sleep(0.002)  # let the tiny TTL expire
    return {"measure": "fleet_health_uncached", "none_cached": flags == {False}, **percentiles(h)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    assert args.duration <= 120 and args.rate <= 5000, "keep runs bounded"
    os.sched_setaffinity(0, {1})
    RESULTS.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    schema = None
    if args.backend == "postgres":
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.pg_url, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {schema}")
        env["DATABASE_URL"] = f"{args.pg_url}?options=-csearch_path%3D{schema}"
    procs = []
    try:
        with tempfile.TemporaryDirectory() as d:
            port = free_port()
            procs.append(start_printd(port, Path(d), env))
            results = trio.run(bench, args, port)
            procs[-1].send_signal(signal.SIGTERM)
            procs[-1].wait(15)
            # the same fleet query with the cache effectively off
            port2 = free_port()
            d2 = Path(d) / "uncached"
            d2.mkdir()
            procs.append(start_printd(port2, d2, env, "[health]\nfleet_cache_ttl = 0.001\n"))
            results.append(trio.run(fleet_uncached, port2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if schema:
            import psycopg

            with psycopg.connect(args.pg_url, autocommit=True) as c:
                c.execute(f"DROP SCHEMA {schema} CASCADE")
    with open(RESULTS / "jobs.jsonl", "a") as f:
        for r in results:
            r.update({"backend": args.backend, "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r))


if __name__ == "__main__":
    main()
