#!/usr/bin/env python3
"""Benchmark orchestrator: printd against its peers, one experiment at a time, on 127.0.0.1.

Each measurement starts a fresh server pinned to CPU0 and drives it with loadclient.py pinned
to CPU1 (the orchestrator itself runs on CPU1 too and mostly sleeps). Every child process is
tracked and stopped in `finally`. Results are appended as JSON lines to
benchmarks/results/results.jsonl; a markdown table per experiment is printed at the end
(--markdown PATH also writes it to a file). Server logs go to benchmarks/results/logs/.

Experiments:
  mem      RSS per idle authenticated agent connection at --levels (default 1000,5000,10000,19000)
  connect  --handshakes 5000 with --in-flight 500: time until all are open
  rtt      closed-loop ping round trips/s at --conns (default 100,1000)
  fanout   --agents 5000 x 1 status/s x --payload-bytes 2000, --dashboards 5 over --companies 50:
           server CPU, latency agent send -> dashboard receipt of the newest item of each batch
  wire     the fan-out at --wire-agents 1000 (one dashboard per company) twice: deflate offered +
           100 ms batching, then neither; bytes on the wire each way and the share saved
  all      all of the above in that order

Every measurement runs --runs times (default 3; the impls alternate within a run) and the tables
give each figure as median (min–max) over the runs, with the background beside each row: the load
average and the busy % of each core that was neither ours nor softirq (benchstats.Background).

    .venv/bin/python benchmarks/run.py rtt --impls printd,asyncio,triows,sio --conns 100,1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the background load, median and spread, the fan-out floor: shared with cluster_bench and jobs_bench
from benchstats import (  # noqa: E402
    Background,
    background_cell,
    cpu_busy,
    cpu_jiffies,
    cpu_softirq,
    cpu_steal,
    floor_ms,
    spread,
    wait_quiet,
)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
RESULTS = HERE / "results"
LOGS = RESULTS / "logs"
LOADCLIENT = HERE / "loadclient.py"
PY = sys.executable
IMPLS = ("printd", "asyncio", "triows", "sio")
SERVER_CPU, CLIENT_CPU = 0, 1
CLIENT_BUSY_WARN = 80.0  # client CPU % above which a figure may be client-bound
CLIENT_CORE_WARN = 90.0  # the same for the client's core as a whole (CPU1 busy %)
CONNS_PER_CLIENT_PROC = 8000  # stay far below the per-process fd limit
BATCH_S = 0.1  # every server's status batch period (printd's default, the peers' --batch-ms 100)

# settings a shell may carry that would point printd elsewhere than its temporary data dir
PRINTD_ENV_STRIP = frozenset(
    {
        "PRINTD_CONFIG",
        "PRINTD_DATA_DIR",
        "PRINTD_MODE",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_HOST",
        "PORT",
        "HOST",
        "INSTANCE_ID",
        "STATUS_BATCH_DELAY",
        "CORS_ORIGINS",
    }
)
CHILDREN: list[subprocess.Popen[Any]] = []
RECORDS: list[dict[str, Any]] = []


# ------------------------------------------------------------------------------------------ processes

# decided once, before the orchestrator pins itself to the client's CPU
PINNING = {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0)


def can_pin() -> bool:
    return PINNING


def child_setup(cpu: int) -> Any:
    """preexec_fn: pin to one CPU and raise the soft fd limit to the hard one."""
    pin = can_pin()

    def setup() -> None:
        if pin:
            os.sched_setaffinity(0, {cpu})
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


def spawn(cmd: list[str], cpu: int, **kw: Any) -> subprocess.Popen[Any]:
    p = subprocess.Popen(cmd, preexec_fn=child_setup(cpu), **kw)
    CHILDREN.append(p)
    return p


def stop(p: subprocess.Popen[Any], wait: float = 10.0) -> None:
    """SIGTERM, then SIGKILL; also any process it started that outlived it (by pid)."""
    if p.poll() is not None:
        return
    try:
        descendants = psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
    for d in descendants:
        try:
            d.kill()
        except psutil.Error:
            pass


def stop_all() -> None:
    for p in reversed(CHILDREN):
        try:
            stop(p, wait=5)
        except Exception as e:  # keep stopping the others
            print(f"warning: could not stop pid {p.pid}: {e}", file=sys.stderr)


def tree_cpu_s(p: subprocess.Popen[Any]) -> float:
    """CPU time of a process and everything under it, the children it reaped included."""
    try:
        root = psutil.Process(p.pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in root.children(recursive=True):
            try:
                tc = c.cpu_times()
                total += tc.user + tc.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unexplained_pct(res: dict[str, Any]) -> float:
    """Busy time on the two cores that is neither the server's, the client's nor softirq work:
    processes too short-lived for ForeignCPU to see. 0 where the cores were not sampled."""
    if res.get("cpu0_other_pct") is None:
        return 0.0
    return round(res["cpu0_other_pct"] + res["cpu1_other_pct"] - res.get("softirq_pct", 0.0), 1)


def repeat_if_disturbed(args: argparse.Namespace, measure: Any) -> dict[str, Any]:
    """Run `measure()` until other work used at most --max-foreign % CPU during it (or --retries
    is spent); the record says how many attempts it took."""
    res: dict[str, Any] = {}
    for attempt in range(1, args.retries + 2):
        res = measure()
        res["attempt"] = attempt
        res["unexplained_cpu_pct"] = unexplained = unexplained_pct(res)
        disturbed = max(res.get("foreign_cpu_pct", 0.0), unexplained) > args.max_foreign
        if res.get("error") or not disturbed:
            break
        print(
            f"other work during the measurement (foreign {res.get('foreign_cpu_pct')} %, "
            f"unexplained {unexplained} %): repeating",
            file=sys.stderr,
            flush=True,
        )
        args.quiet_state = wait_quiet(args)
    return res


# ------------------------------------------------------------------------------------------ servers


class Server:
    """One gateway under test: printd or a peer, pinned to CPU0."""

    def __init__(
        self,
        impl: str,
        args: argparse.Namespace,
        *,
        batching: bool = True,
        compression: bool = False,
        expose_gc: bool = False,
        stamp: bool = False,
    ) -> None:
        self.impl = impl
        self.port = free_port()
        self.batching = batching
        self.compression = compression
        LOGS.mkdir(parents=True, exist_ok=True)
        stem = LOGS / f"{impl}-{self.port}"
        self.out_path, self.err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        env = {k: v for k, v in os.environ.items() if k not in PRINTD_ENV_STRIP}
        env["JWT_SECRET"] = args.secret
        batch_ms = "100" if batching else "0"
        comp = "deflate" if compression else "none"
        self.data_dir: tempfile.TemporaryDirectory[str] | None = None
        if impl == "printd":
            self.data_dir = tempfile.TemporaryDirectory(prefix="printd-bench-")
            cmd = [args.printd, "run", "--port", str(self.port), "--data-dir", self.data_dir.name]
            env["PRINTD_LOG_LEVEL"] = "warning"
            if not batching:
                env["STATUS_BATCH_DELAY"] = "0"
        elif impl == "asyncio":
            cmd = [
                PY,
                str(PEERS / "asyncio_peer.py"),
                "--port",
                str(self.port),
                "--batch-ms",
                batch_ms,
                "--compression",
                comp,
            ]
        elif impl == "triows":
            cmd = [PY, str(PEERS / "triows_peer.py"), "--port", str(self.port), "--batch-ms", batch_ms]
        elif impl == "sio":
            node = [args.node, "--expose-gc"] if expose_gc else [args.node]
            cmd = [
                *node,
                str(PEERS / "socketio_peer.js"),
                "--port",
                str(self.port),
                "--batch-ms",
                batch_ms,
                "--compression",
                comp,
            ] + (["--gc-signal"] if expose_gc else [])
            if stamp:  # `sent_at` at the batch tick, as printd sends it: the server-added latency
                cmd.append("--batch-stamp")
        else:
            raise ValueError(f"unknown impl {impl}")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as errf:
            self.proc = spawn(cmd, SERVER_CPU, env=env, stdout=out, stderr=errf, cwd=str(HERE))
        self.ps = psutil.Process(self.proc.pid)
        self.info: dict[str, Any] = {}
        try:
            self._wait_ready(args.ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.impl} exited with {self.proc.returncode} before it was ready; "
                    f"see {self.err_path}: {self.err_path.read_text()[-800:]}"
                )
            if self.impl == "printd":
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.port}/monitoring/health", timeout=1
                    ) as r:
                        if r.status == 200:
                            self.info = {"ready": True, "health": r.read(300).decode(errors="replace")}
                            return
                except (urllib.error.URLError, OSError):
                    pass
            else:
                for line in self.out_path.read_text().splitlines():
                    if line.startswith("{") and '"ready"' in line:
                        self.info = json.loads(line)
                        return
            time.sleep(0.1)
        raise RuntimeError(f"{self.impl} not ready after {timeout} s; see {self.err_path}")

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def rss_kb(self) -> float:
        total = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 1024

    def stop(self) -> None:
        stop(self.proc)
        if self.data_dir is not None:
            self.data_dir.cleanup()
            self.data_dir = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------ load client


class ClientRun:
    """A loadclient.py coordinator on CPU1 and its JSON lines."""

    def __init__(self, mode: str, server: Server, args: argparse.Namespace, *opts: Any) -> None:
        cmd = [PY, str(LOADCLIENT), mode, "--port", str(server.port), *[str(o) for o in opts]]
        if server.impl == "sio":
            cmd.append("--sio")
        self.cmd = cmd
        self.proc = spawn(
            cmd,
            CLIENT_CPU,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "JWT_SECRET": args.secret},
            cwd=str(HERE),
        )
        self.buf = b""

    def line(self, phase: str, timeout: float) -> dict[str, Any]:
        """The next JSON line of this phase (skipping others), or an error record."""
        end = time.time() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            while b"\n" in self.buf:
                raw, _, self.buf = self.buf.partition(b"\n")
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                if obj.get("phase") == phase:
                    return obj
            left = end - time.time()
            if left <= 0:
                return {"phase": phase, "error": f"no {phase} line within {timeout:.0f} s"}
            ready, _, _ = select.select([fd], [], [], min(1.0, left))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    return {"phase": phase, "error": f"client exited ({self.proc.wait()}) before {phase}"}
                self.buf += data

    def finish(self, timeout: float = 30.0) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(self.proc)


def windowed(server: Server, client: ClientRun, timeout: float) -> dict[str, Any]:
    """Read a ping/load run: sample the server's CPU over the client's measurement window."""
    ready = client.line("ready", timeout)
    if ready.get("error") or not ready.get("ok"):
        stop(client.proc)
        return {"error": ready.get("error") or "no connection opened", "errors": ready.get("errors")}
    win = client.line("window", 60)
    if win.get("error"):
        return {"error": win["error"]}
    time.sleep(max(0.0, win["m0"] - time.time()))
    c0, j0, w0 = server.cpu_s(), cpu_jiffies(), time.time()
    bg = Background(server.proc, client.proc)
    time.sleep(max(0.0, win["m1"] - time.time()))
    c1, j1, w1 = server.cpu_s(), cpu_jiffies(), time.time()
    server_pct = round(100 * (c1 - c0) / (w1 - w0), 1)
    self_pct = bg.self_pct()
    res = client.line("result", timeout)
    client.finish()
    res.pop("phase", None)
    # ours: the server alone on CPU0; the client (its own figure over the same window) and this
    # script on CPU1
    background = bg.end(
        own_by_core={SERVER_CPU: server_pct, CLIENT_CPU: (res.get("client_cpu_pct") or 0) + self_pct}
    )
    foreign_pct = background["foreign_cpu_pct"]
    cpu0, cpu1 = cpu_busy(j0, j1, SERVER_CPU), cpu_busy(j0, j1, CLIENT_CPU)
    # "other": what ran on each core besides the server (CPU0) or the client (CPU1): softirq work of
    # the loopback traffic, and any other process on the machine
    res.update(
        {
            "server_cpu_pct": server_pct,
            "foreign_cpu_pct": foreign_pct,
            "cpu0_busy_pct": cpu0,
            "cpu1_busy_pct": cpu1,
            "steal_pct": cpu_steal(j0, j1),
            "cpu0_other_pct": round(cpu0 - server_pct, 1),
            "cpu1_other_pct": round(cpu1 - (res.get("client_cpu_pct") or 0), 1),
            "softirq_pct": round(cpu_softirq(j0, j1, SERVER_CPU) + cpu_softirq(j0, j1, CLIENT_CPU), 1),
            "server_rss_MB": round(server.rss_kb() / 1024, 1),
            "background": background,
        }
    )
    return res


# ------------------------------------------------------------------------------------------ records


def record(exp: str, impl: str, rec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rec = {
        "exp": exp,
        "impl": impl,
        "run_id": args.run_id,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": {"cpus": os.cpu_count(), "pinned": can_pin(), "python": platform.python_version()},
        **getattr(args, "quiet_state", {}),
        **rec,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    RECORDS.append(rec)
    short = {k: v for k, v in rec.items() if k not in ("host", "errors", "run_id", "when")}
    if rec.get("errors"):
        short["errors"] = rec["errors"]
    print(json.dumps(short), flush=True)
    return rec


def guarded(exp: str, impl: str, args: argparse.Namespace, fn: Any, *fn_args: Any) -> None:
    """Run one measurement; a failing server or client becomes an error record, not an abort."""
    try:
        args.quiet_state = wait_quiet(args)
        fn(*fn_args)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        record(exp, impl, {"error": f"{type(e).__name__}: {e}"}, args)


# ------------------------------------------------------------------------------------------ experiments


def exp_mem(args: argparse.Namespace, impl: str, run: int) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    holders: list[ClientRun] = []
    with Server(impl, args, expose_gc=impl == "sio") as srv:
        try:
            time.sleep(1.0)
            base = srv.rss_kb()
            have = 0
            for level in levels:
                delta = level - have
                procs = max(1, math.ceil(delta / CONNS_PER_CLIENT_PROC))
                h = ClientRun(
                    "idle",
                    srv,
                    args,
                    "--conns",
                    delta,
                    "--first",
                    have,
                    "--procs",
                    procs,
                    "--concurrency",
                    args.in_flight,
                    "--hold",
                    3000,
                )
                holders.append(h)
                # the background over the step: ours are the server (CPU0), the holders and this script (CPU1)
                bg = Background(srv.proc, *[x.proc for x in holders])
                s0, c0 = srv.cpu_s(), sum(tree_cpu_s(x.proc) for x in holders)
                ready = h.line("ready", 120 + delta / 50)
                if ready.get("error") or ready.get("fail"):
                    error = ready.get("error") or "connections failed"
                    record(
                        "mem",
                        impl,
                        {"run": run, "conns": level, "error": error, "errors": ready.get("errors")},
                        args,
                    )
                    return
                have = level
                time.sleep(args.settle)
                rss = srv.rss_kb()
                dt = max(1e-6, time.time() - bg.t0)
                clients = 100 * (sum(tree_cpu_s(x.proc) for x in holders) - c0) / dt + bg.self_pct()
                server = 100 * (srv.cpu_s() - s0) / dt
                background = bg.end(own_by_core={SERVER_CPU: server, CLIENT_CPU: clients})
                rec = {
                    "run": run,
                    "conns": level,
                    "rss_MB": round(rss / 1024, 1),
                    "base_MB": round(base / 1024, 1),
                    "KB_per_conn": round((rss - base) / level, 2),
                    "settle_s": args.settle,
                    "step_open_s": ready.get("open_s"),
                    "errors": ready.get("errors"),
                    "background": background,
                }
                if impl == "sio":  # V8 keeps handshake garbage until a major GC: report both
                    srv.proc.send_signal(signal.SIGUSR2)
                    time.sleep(2.0)
                    rss_gc = srv.rss_kb()
                    rec.update(
                        {
                            "rss_MB_after_gc": round(rss_gc / 1024, 1),
                            "KB_per_conn_after_gc": round((rss_gc - base) / level, 2),
                        }
                    )
                record("mem", impl, rec, args)
        finally:
            srv.stop()  # the server first: its side of the sockets goes away with it
            for h in holders:
                stop(h.proc, wait=5)


def exp_connect(args: argparse.Namespace, impl: str, run: int) -> None:
    def measure() -> dict[str, Any]:
        with Server(impl, args) as srv:
            if args.connect_warmup:  # warm caches and JITs with a few handshakes first, for every impl
                warm = ClientRun("connect", srv, args, "--conns", args.connect_warmup, "--concurrency", 50)
                warm.line("result", 60)
                warm.finish()
            time.sleep(0.5)
            procs = max(1, math.ceil(args.handshakes / CONNS_PER_CLIENT_PROC))
            c0 = srv.cpu_s()
            client = ClientRun(
                "connect",
                srv,
                args,
                "--conns",
                args.handshakes,
                "--concurrency",
                args.in_flight,
                "--procs",
                procs,
            )
            bg = Background(srv.proc, client.proc)
            res = client.line("result", 180 + args.handshakes / 50)
            c1 = srv.cpu_s()
            dt = max(1e-6, time.time() - bg.t0)
            # ours: the server on CPU0; the client (its processes, reaped ones too) and this script on CPU1
            ours = {
                SERVER_CPU: 100 * (c1 - c0) / dt,
                CLIENT_CPU: 100 * tree_cpu_s(client.proc) / dt + bg.self_pct(),
            }
            res["background"] = bg.end(own_by_core=ours)
            res["foreign_cpu_pct"] = res["background"]["foreign_cpu_pct"]
            client.finish()
            res.pop("phase", None)
            if res.get("open_s"):
                res["server_cpu_s"] = round(c1 - c0, 3)
                res["server_busy_pct"] = round(100 * (c1 - c0) / res["open_s"], 1)
            return res

    record("connect", impl, {"run": run, **repeat_if_disturbed(args, measure)}, args)


def exp_rtt(args: argparse.Namespace, impl: str, run: int) -> None:
    for conns in [int(x) for x in args.conns.split(",")]:

        def measure(conns: int = conns) -> dict[str, Any]:
            with Server(impl, args) as srv:
                opts: list[Any] = [
                    "--conns",
                    conns,
                    "--duration",
                    args.duration or 10,
                    "--warmup",
                    args.warmup,
                    "--concurrency",
                    args.in_flight,
                ]
                if not args.generic_loop:
                    opts.append("--epoll")
                return windowed(srv, ClientRun("ping", srv, args, *opts), 180 + conns / 50)

        record("rtt", impl, {"run": run, "conns": conns, **repeat_if_disturbed(args, measure)}, args)


def load_opts(args: argparse.Namespace, agents: int, dashboards: int, duration: float) -> list[Any]:
    procs = args.client_procs or max(1, math.ceil((agents + dashboards) / CONNS_PER_CLIENT_PROC))
    return [
        "--agents",
        agents,
        "--dashboards",
        dashboards,
        "--companies",
        args.companies,
        "--interval",
        args.interval,
        "--payload-bytes",
        args.payload_bytes,
        "--duration",
        duration,
        "--warmup",
        args.load_warmup,
        "--concurrency",
        args.in_flight,
        "--procs",
        procs,
    ]


def exp_fanout(args: argparse.Namespace, impl: str, run: int) -> None:
    def measure() -> dict[str, Any]:
        with Server(impl, args, stamp=True) as srv:
            opts = load_opts(args, args.agents, args.dashboards, args.duration or 20)
            res = windowed(srv, ClientRun("load", srv, args, *opts), 240 + args.agents / 50)
        # the newest-item latency batching alone causes, from the items per batch seen
        sizes = res.get("batch_sizes") or {}
        res["floor_newest"] = {q: floor_ms(sizes, BATCH_S, x) for q, x in (("p50_ms", 0.5), ("p99_ms", 0.99))}
        res["items_per_batch"] = round((res.get("items_rx") or 0) / max(1, res.get("batches_rx") or 1), 2)
        return res

    record("fanout", impl, {"run": run, **repeat_if_disturbed(args, measure)}, args)


def exp_wire(args: argparse.Namespace, impl: str, run: int) -> None:
    dashboards = args.wire_dashboards or args.companies
    for variant, on in (("deflate+batching", True), ("neither", False)):

        def measure(on: bool = on) -> dict[str, Any]:
            with Server(impl, args, batching=on, compression=on) as srv:
                opts = load_opts(args, args.wire_agents, dashboards, args.duration or 20)
                if on:
                    opts.append("--deflate")
                return windowed(srv, ClientRun("load", srv, args, *opts), 240 + args.wire_agents / 50)

        record("wire", impl, {"run": run, "variant": variant, **repeat_if_disturbed(args, measure)}, args)


EXPERIMENTS = {"mem": exp_mem, "connect": exp_connect, "rtt": exp_rtt, "fanout": exp_fanout, "wire": exp_wire}


# ------------------------------------------------------------------------------------------ tables
#
# One row per implementation (and level/variant); every figure cell is `median (min–max)` over the
# runs that did not fail (`runs` says how many of how many), and the last columns give the
# background over the same windows: the 1-min load average at the start and the busy % of each
# core that was neither ours nor softirq work (CPU0 / CPU1).


def fmt(v: Any, nd: int = 1) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def fig(rec: dict[str, Any], path: str) -> Any:
    """A figure of a record by dotted path (`rtt.p99_ms`); None if absent."""
    node: Any = rec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def cell(recs: list[dict[str, Any]], path: str, nd: int = 1) -> str:
    return spread([fig(r, path) for r in recs], nd, "()")


def grouped(recs: list[dict[str, Any]], *keys: str) -> list[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Records grouped by `impl` and `keys`, in the order they were measured."""
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        out.setdefault((r["impl"], *[r.get(k) for k in keys]), []).append(r)
    return list(out.items())


def ok(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recs if not r.get("error")]


def runs(recs: list[dict[str, Any]]) -> str:
    return f"{len(ok(recs))}/{len(recs)}"


def bg(recs: list[dict[str, Any]]) -> str:
    return background_cell([r.get("background") or {} for r in ok(recs)], "()")


def errors(recs: list[dict[str, Any]]) -> str:
    e = "; ".join(sorted({str(r["error"]) for r in recs if r.get("error")}))
    return (e[:80] + "…") if len(e) > 80 else e


def client_cell(recs: list[dict[str, Any]]) -> str:
    """The client's CPU share and its core's total busy share (which includes loopback softirq
    work the kernel did not charge to the client). A client core near full while the server's
    is not means the figure may be client-bound; both near full, that both cores were saturated;
    the note counts the runs it applies to."""
    good = ok(recs)
    if not any(r.get("client_cpu_pct") is not None for r in good):
        return "–"
    text = f"{cell(good, 'client_cpu_pct', 0)} %"
    if any(r.get("cpu1_busy_pct") is not None for r in good):
        text += f" (core {cell(good, 'cpu1_busy_pct', 0)} %)"
    full = both = 0
    for r in good:
        pct, core = r.get("client_cpu_pct") or 0, r.get("cpu1_busy_pct") or 0
        if pct >= CLIENT_BUSY_WARN or core >= CLIENT_CORE_WARN:
            server = r.get("server_cpu_pct", r.get("server_busy_pct")) or 0
            if server >= CLIENT_CORE_WARN:
                both += 1
            else:
                full += 1
    if both:
        text += f" both cores full in {both}/{len(good)}"
    if full:
        text += f" client-bound? in {full}/{len(good)}"
    return text


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def md_mem(recs: list[dict[str, Any]], impls: list[str]) -> str:
    levels = sorted({r["conns"] for r in recs if "conns" in r})
    rows = []
    for impl in impls:
        mine = [r for r in recs if r["impl"] == impl]
        if not mine:
            continue
        cells = []
        for lv in levels:
            at = [r for r in mine if r.get("conns") == lv]
            c = cell(ok(at), "KB_per_conn") if ok(at) else (errors(at) or "–")
            if any("KB_per_conn_after_gc" in r for r in at):
                c += f"; after GC {cell(ok(at), 'KB_per_conn_after_gc')}"
            cells.append(c)
        top = [r for r in ok(mine) if levels and r.get("conns") == levels[-1]]
        runs_done = len({r.get("run") for r in mine})
        rows.append(
            [impl, f"{len(top)}/{runs_done}", *cells, cell(top, "rss_MB"), cell(top, "base_MB"), bg(mine)]
        )
    head = [
        "impl",
        "runs",
        *[f"{lv:,} conns" for lv in levels],
        "RSS at max (MB)",
        "RSS idle (MB)",
        "background",
    ]
    return "### RSS per idle authenticated connection (KB)\n\n" + table(head, rows)


def md_connect(recs: list[dict[str, Any]]) -> str:
    rows = []
    for (impl,), rs in grouped(recs):
        good = ok(rs)
        rows.append(
            [
                impl,
                runs(rs),
                fmt(good[0].get("conns")) if good else "–",  # settings, the same in every run
                fmt(good[0].get("concurrency")) if good else "–",
                cell(good, "open_s", 2),
                cell(good, "conn_per_s", 0),
                cell(good, "server_busy_pct"),
                client_cell(rs),
                cell(good, "fail", 0),
                bg(rs),
                errors(rs),
            ]
        )
    head = [
        "impl",
        "runs",
        "handshakes",
        "in flight",
        "time to all open (s)",
        "handshakes/s",
        "server busy %",
        "client CPU",
        "failed",
        "background",
        "errors",
    ]
    return "### Handshakes (JWT checked)\n\n" + table(head, rows)


def md_rtt(recs: list[dict[str, Any]]) -> str:
    rows = []
    for (impl, conns), rs in grouped(recs, "conns"):
        good = ok(rs)
        rows.append(
            [
                impl,
                fmt(conns),
                runs(rs),
                cell(good, "round_trips_per_s", 0),
                cell(good, "rtt.p50_ms", 2),
                cell(good, "rtt.p99_ms", 2),
                cell(good, "server_cpu_pct"),
                client_cell(rs),
                bg(rs),
                errors(rs),
            ]
        )
    head = [
        "impl",
        "conns",
        "runs",
        "round trips/s",
        "p50 ms",
        "p99 ms",
        "server CPU %",
        "client CPU",
        "background",
        "errors",
    ]
    return "### Ping round trips (closed loop, one in flight per connection)\n\n" + table(head, rows)


def md_fanout(recs: list[dict[str, Any]]) -> str:
    rows = []
    for (impl, agents), rs in grouped(recs, "agents"):
        good = ok(rs)
        rows.append(
            [
                impl,
                fmt(agents),
                runs(rs),
                cell(good, "server_cpu_pct"),
                cell(good, "latency_newest.p50_ms"),
                cell(good, "latency_newest.p99_ms"),
                cell(good, "floor_newest.p50_ms"),
                cell(good, "floor_newest.p99_ms"),
                cell(good, "latency_server_added.p50_ms", 2),
                cell(good, "latency_server_added.p99_ms", 2),
                cell(good, "items_per_batch"),
                f"{cell(good, 'items_rx', 0)} / {cell(good, 'items_expected', 0)}",
                client_cell(rs),
                bg(rs),
                errors(rs),
            ]
        )
    head = [
        "impl",
        "agents",
        "runs",
        "server CPU %",
        "newest p50 ms",
        "newest p99 ms",
        "floor p50 ms",
        "floor p99 ms",
        "server-added p50 ms",
        "server-added p99 ms",
        "items/batch",
        "items rx / expected",
        "client CPU",
        "background",
        "errors",
    ]
    title = (
        "### Status fan-out (newest: agent send -> dashboard receipt of a batch's newest item; floor: what "
        "the 100 ms batching alone causes; server-added: batch tick -> dashboard receipt)"
    )
    return title + "\n\n" + table(head, rows)


def saved_pct(rec: dict[str, Any], base: dict[str, Any] | None, *keys: str) -> float | None:
    """The share of bytes `rec` saved against `base` (the same impl and run with neither)."""
    if base is None or rec is base or any(rec.get(k) is None for k in keys):
        return None
    before = sum(base.get(k) or 0 for k in keys)
    return round(100 * (1 - sum(rec[k] for k in keys) / before), 1) if before else None


def md_wire(recs: list[dict[str, Any]]) -> str:
    plain = {(r["impl"], r.get("run")): r for r in ok(recs) if r.get("variant") == "neither"}
    rows = []
    for (impl, variant), rs in grouped(recs, "variant"):
        good = ok(rs)
        for r in good:  # against the same impl's run without either lever
            base = plain.get((r["impl"], r.get("run")))
            r["saved_tx_pct"] = saved_pct(r, base, "wire_tx_KBps")
            r["saved_rx_pct"] = saved_pct(r, base, "wire_rx_KBps")
            r["saved_total_pct"] = saved_pct(r, base, "wire_tx_KBps", "wire_rx_KBps")
        offered = [r for r in good if r.get("deflate")]
        accepted = (
            ", ".join(sorted({f"{r.get('deflate_accepted', 0)}/{r.get('ok', 0)}" for r in offered}))
            if offered
            else "not offered"
        )
        rows.append(
            [
                impl,
                str(variant),
                runs(rs),
                accepted,
                cell(good, "wire_tx_KBps"),
                cell(good, "saved_tx_pct", 0),
                cell(good, "wire_rx_KBps"),
                cell(good, "saved_rx_pct", 0),
                cell(good, "saved_total_pct"),
                cell(good, "server_cpu_pct"),
                client_cell(rs),
                bg(rs),
                errors(rs),
            ]
        )
    head = [
        "impl",
        "variant",
        "runs",
        "deflate accepted",
        "client->server KB/s",
        "saved %",
        "server->client KB/s",
        "saved %",
        "saved in total %",
        "server CPU %",
        "client CPU",
        "background",
        "errors",
    ]
    return "### Bytes on the wire (client->server: agents' updates; server->client: batches)\n\n" + table(
        head, rows
    )


def markdown(args: argparse.Namespace) -> str:
    by = {e: [r for r in RECORDS if r["exp"] == e] for e in EXPERIMENTS}
    parts = []
    if by["mem"]:
        parts.append(md_mem(by["mem"], args.impl_list))
    for exp, fn in (("connect", md_connect), ("rtt", md_rtt), ("fanout", md_fanout), ("wire", md_wire)):
        if by[exp]:
            parts.append(fn(by[exp]))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ main


def ensure_node_deps(args: argparse.Namespace) -> None:
    if "sio" not in args.impl_list or (PEERS / "node_modules" / "socket.io").is_dir():
        return
    print("installing the Socket.IO peer's npm dependencies ...", flush=True)
    subprocess.run(
        ["npm", "install", "--prefix", str(PEERS), "--no-audit", "--no-fund"], check=True, timeout=600
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "experiments",
        nargs="+",
        help=f"{', '.join([*EXPERIMENTS, 'all'])}; several: 'rtt connect' or 'rtt,connect'",
    )
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ",".join(IMPLS))
    ap.add_argument(
        "--runs", type=int, default=3, help="repeat every measurement; tables give median (min–max)"
    )
    ap.add_argument("--levels", default="1000,5000,10000,19000", help="mem: connection counts")
    ap.add_argument("--settle", type=float, default=5.0, help="mem: seconds between a level and its sample")
    ap.add_argument("--handshakes", type=int, default=5000, help="connect: handshakes")
    ap.add_argument("--connect-warmup", type=int, default=200, help="connect: handshakes before measuring")
    ap.add_argument("--in-flight", type=int, default=500, help="handshakes in flight (every experiment)")
    ap.add_argument("--conns", default="100,1000", help="rtt: connection counts")
    ap.add_argument("--generic-loop", action="store_true", help="rtt: the client's generic loop, not --epoll")
    ap.add_argument("--duration", type=float, default=None, help="measurement window (rtt 10 s, load 20 s)")
    ap.add_argument("--warmup", type=float, default=2.0, help="rtt: warm-up before the window")
    ap.add_argument("--load-warmup", type=float, default=5.0, help="fanout/wire: warm-up before the window")
    ap.add_argument("--agents", type=int, default=5000, help="fanout: agents")
    ap.add_argument("--dashboards", type=int, default=5, help="fanout: dashboard d watches company d")
    ap.add_argument("--companies", type=int, default=50, help="fanout/wire: companies")
    ap.add_argument("--interval", type=float, default=1.0, help="fanout/wire: s between updates")
    ap.add_argument("--payload-bytes", type=int, default=2000, help="fanout/wire: size of one status message")
    ap.add_argument("--wire-agents", type=int, default=1000, help="wire: agents")
    ap.add_argument("--wire-dashboards", type=int, default=0, help="wire: default one per company")
    ap.add_argument("--client-procs", type=int, default=0, help="fanout/wire: client processes")
    ap.add_argument("--printd", default=str(Path(PY).parent / "printd"), help="printd executable")
    ap.add_argument("--node", default="node", help="node executable")
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="seconds for a server to become ready")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each measurement wait up to this long for an idle machine",
    )
    ap.add_argument("--quiet-busy", type=float, default=15.0, help="busy %% per CPU that counts as idle")
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="repeat a measurement if other processes used more CPU %% than this during it",
    )
    ap.add_argument("--retries", type=int, default=3, help="repeats allowed per disturbed measurement")
    ap.add_argument("--markdown", metavar="PATH", help="also write the tables to this file")
    args = ap.parse_args()
    args.impl_list = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in args.impl_list if i not in IMPLS]
    if bad:
        ap.error(f"unknown impls {bad}; choose from {','.join(IMPLS)}")
    if (args.duration or 0) + max(args.warmup, args.load_warmup) > 300:
        ap.error("keep runs bounded: warm-up + duration <= 300 s")
    asked = [e for word in args.experiments for e in word.split(",") if e]
    if any(e not in (*EXPERIMENTS, "all") for e in asked):
        ap.error(f"experiments: choose from {', '.join([*EXPERIMENTS, 'all'])}")
    experiments = list(EXPERIMENTS) if "all" in asked else list(dict.fromkeys(asked))
    args.secret = secrets.token_hex(32)
    args.run_id = time.strftime("%Y%m%d-%H%M%S")
    if can_pin():
        os.sched_setaffinity(0, {CLIENT_CPU})
    else:
        print("warning: fewer than 2 CPUs: server and client are not pinned apart", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ensure_node_deps(args)
        for exp in experiments:
            for run in range(args.runs):
                for impl in args.impl_list:
                    guarded(exp, impl, args, EXPERIMENTS[exp], args, impl, run)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        stop_all()
    md = markdown(args)
    print("\n" + md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
