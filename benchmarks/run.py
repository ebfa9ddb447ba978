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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_jiffies() -> dict[int, list[int]]:
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                out[int(parts[0][3:])] = [int(x) for x in parts[1:9]]
    return out


def cpu_steal(t0: dict[int, list[int]], t1: dict[int, list[int]]) -> float:
    """Share of time the hypervisor took from this VM's CPUs (invisible as a process)."""
    steal = sum(t1[c][7] - t0[c][7] for c in t0)
    total = sum(sum(t1[c]) - sum(t0[c]) for c in t0)
    return round(100 * steal / (total or 1), 1)


def cpu_softirq(t0: dict[int, list[int]], t1: dict[int, list[int]], cpu: int) -> float:
    d = [b - a for a, b in zip(t0[cpu], t1[cpu], strict=True)]
    return round(100 * d[6] / (sum(d) or 1), 1)


def cpu_busy(t0: dict[int, list[int]], t1: dict[int, list[int]], cpu: int) -> float:
    """Busy share of one CPU between two /proc/stat samples (user+nice+system+irq+softirq)."""
    d = [b - a for a, b in zip(t0[cpu], t1[cpu], strict=True)]
    total = sum(d) or 1
    return round(100 * (d[0] + d[1] + d[2] + d[5] + d[6]) / total, 1)


def wait_quiet(args: argparse.Namespace) -> dict[str, Any]:
    """Wait (up to --quiet-wait s) for a second in which both CPUs are nearly idle: other work on the
    machine would otherwise be measured too. Returns the last sample, recorded with the figure."""
    end = time.time() + args.quiet_wait
    while True:
        j0 = cpu_jiffies()
        time.sleep(1.0)
        j1 = cpu_jiffies()
        busy = {f"cpu{c}": cpu_busy(j0, j1, c) for c in (SERVER_CPU, CLIENT_CPU)}
        if max(busy.values()) <= args.quiet_busy or time.time() >= end:
            return {"background_busy_pct": busy, "quiet": max(busy.values()) <= args.quiet_busy}
        print(f"waiting for a quiet machine: {busy}", file=sys.stderr, flush=True)


class ForeignCPU:
    """CPU used by processes that are not ours (the server, the client, this script) over a span:
    another workload on the machine invalidates a figure, so such runs are repeated."""

    def __init__(self, *own: subprocess.Popen[Any]) -> None:
        self.own_roots = [p.pid for p in own] + [os.getpid()]
        self.t0 = time.time()
        self.snap0 = self._snapshot()

    def _own(self) -> set[int]:
        pids = set(self.own_roots)
        for pid in self.own_roots:
            try:
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def _snapshot(self) -> dict[int, float]:
        own = self._own()
        out = {}
        for p in psutil.process_iter():
            if p.pid in own:
                continue
            try:
                t = p.cpu_times()  # with reaped children: short-lived processes show up there
                out[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return out

    def pct(self) -> float:
        snap1 = self._snapshot()
        used = sum(max(0.0, c - self.snap0.get(pid, 0.0)) for pid, c in snap1.items())
        return round(100 * used / max(1e-6, time.time() - self.t0), 1)


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
    foreign = ForeignCPU(server.proc, client.proc)
    time.sleep(max(0.0, win["m1"] - time.time()))
    c1, j1, w1 = server.cpu_s(), cpu_jiffies(), time.time()
    foreign_pct = foreign.pct()
    res = client.line("result", timeout)
    client.finish()
    res.pop("phase", None)
    server_pct = round(100 * (c1 - c0) / (w1 - w0), 1)
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
                rec = {
                    "run": run,
                    "conns": level,
                    "rss_MB": round(rss / 1024, 1),
                    "base_MB": round(base / 1024, 1),
                    "KB_per_conn": round((rss - base) / level, 2),
                    "settle_s": args.settle,
                    "step_open_s": ready.get("open_s"),
                    "errors": ready.get("errors"),
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
            foreign = ForeignCPU(srv.proc, client.proc)
            res = client.line("result", 180 + args.handshakes / 50)
            c1 = srv.cpu_s()
            res["foreign_cpu_pct"] = foreign.pct()
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
        with Server(impl, args) as srv:
            opts = load_opts(args, args.agents, args.dashboards, args.duration or 20)
            return windowed(srv, ClientRun("load", srv, args, *opts), 240 + args.agents / 50)

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


def fmt(v: Any, nd: int = 1) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def client_note(rec: dict[str, Any]) -> str:
    """The client's CPU share and its core's total busy share (which includes loopback softirq
    work the kernel did not charge to the client). A client core near full while the server's
    is not means the figure may be client-bound; both near full, that both cores were saturated."""
    pct = rec.get("client_cpu_pct")
    if pct is None:
        return "–"
    core = rec.get("cpu1_busy_pct")
    text = f"{pct:.0f} %" + (f" (core {core:.0f} %)" if core is not None else "")
    if pct >= CLIENT_BUSY_WARN or (core or 0) >= CLIENT_CORE_WARN:
        server = rec.get("server_cpu_pct", rec.get("server_busy_pct")) or 0
        text += " both cores full" if server >= CLIENT_CORE_WARN else " client-bound?"
    return text


def other(rec: dict[str, Any]) -> str:
    """CPU time on the two cores not spent by server/client (softirq, other processes)."""
    if rec.get("cpu0_other_pct") is None:
        return "–"
    return f"{rec['cpu0_other_pct']:.0f} / {rec['cpu1_other_pct']:.0f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def err(rec: dict[str, Any]) -> str:
    e = rec.get("error") or ""
    return (e[:80] + "…") if len(e) > 80 else e


def md_mem(recs: list[dict[str, Any]], impls: list[str]) -> str:
    levels = sorted({r["conns"] for r in recs if "conns" in r})
    rows = []
    for impl in impls:
        for run in sorted({r["run"] for r in recs if r["impl"] == impl and "run" in r}):
            at = {r["conns"]: r for r in recs if r["impl"] == impl and r.get("run") == run}
            cells = []
            for lv in levels:
                r = at.get(lv, {})
                c = fmt(r.get("KB_per_conn"), 1) if "KB_per_conn" in r else (err(r) or "–")
                if "KB_per_conn_after_gc" in r:
                    c += f" ({fmt(r['KB_per_conn_after_gc'], 1)} after GC)"
                cells.append(c)
            top = at.get(levels[-1], {}) if levels else {}
            rows.append([impl, *cells, fmt(top.get("rss_MB")), fmt(top.get("base_MB"))])
    head = ["impl", *[f"{lv:,} conns" for lv in levels], "RSS at max (MB)", "RSS idle (MB)"]
    return "### RSS per idle authenticated connection (KB)\n\n" + table(head, rows)


def md_connect(recs: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["impl"],
            fmt(r.get("conns")),
            fmt(r.get("concurrency")),
            fmt(r.get("open_s"), 2),
            fmt(r.get("conn_per_s"), 0),
            fmt(r.get("server_busy_pct")),
            client_note(r),
            fmt(r.get("fail")) + (f" {err(r)}" if r.get("error") else ""),
        ]
        for r in recs
    ]
    head = [
        "impl",
        "handshakes",
        "in flight",
        "time to all open (s)",
        "handshakes/s",
        "server busy %",
        "client CPU",
        "failed",
    ]
    return "### Handshakes (JWT checked)\n\n" + table(head, rows)


def md_rtt(recs: list[dict[str, Any]]) -> str:
    rows = []
    for r in recs:
        rtt = r.get("rtt") or {}
        rows.append(
            [
                r["impl"],
                fmt(r.get("conns")),
                fmt(r.get("round_trips_per_s"), 0),
                fmt(rtt.get("p50_ms"), 2),
                fmt(rtt.get("p99_ms"), 2),
                fmt(r.get("server_cpu_pct")),
                client_note(r),
                other(r),
                err(r),
            ]
        )
    head = [
        "impl",
        "conns",
        "round trips/s",
        "p50 ms",
        "p99 ms",
        "server CPU %",
        "client CPU",
        "other % CPU0/CPU1",
        "error",
    ]
    return "### Ping round trips (closed loop, one in flight per connection)\n\n" + table(head, rows)


def md_fanout(recs: list[dict[str, Any]]) -> str:
    rows = []
    for r in recs:
        lat = r.get("latency_newest") or {}
        rows.append(
            [
                r["impl"],
                fmt(r.get("agents")),
                fmt(r.get("dashboards")),
                fmt(r.get("status_per_s"), 0),
                fmt(r.get("server_cpu_pct")),
                fmt(lat.get("p50_ms"), 1),
                fmt(lat.get("p99_ms"), 1),
                fmt(lat.get("max_ms"), 0),
                f"{fmt(r.get('items_rx'))} / {fmt(r.get('items_expected'))}",
                client_note(r),
                other(r),
                err(r),
            ]
        )
    head = [
        "impl",
        "agents",
        "dashboards",
        "status/s",
        "server CPU %",
        "p50 ms",
        "p99 ms",
        "max ms",
        "items rx / expected",
        "client CPU",
        "other % CPU0/CPU1",
        "error",
    ]
    return "### Status fan-out (newest item of each batch: agent send -> dashboard receipt)\n\n" + table(
        head, rows
    )


def md_wire(recs: list[dict[str, Any]]) -> str:
    plain = {(r["impl"], r.get("run")): r for r in recs if r.get("variant") == "neither"}

    def saved(r: dict[str, Any], key: str) -> str:
        base = plain.get((r["impl"], r.get("run")))
        if not base or r is base or not base.get(key) or r.get(key) is None:
            return "–"
        return f"{100 * (1 - r[key] / base[key]):.0f} %"

    rows = []
    for r in recs:
        accepted = f"{r.get('deflate_accepted', 0)}/{r.get('ok', 0)}" if r.get("deflate") else "not offered"
        rows.append(
            [
                r["impl"],
                r.get("variant", "?"),
                accepted,
                fmt(r.get("wire_tx_KBps")),
                saved(r, "wire_tx_KBps"),
                fmt(r.get("wire_rx_KBps")),
                saved(r, "wire_rx_KBps"),
                fmt(r.get("server_cpu_pct")),
                client_note(r),
                other(r),
                err(r),
            ]
        )
    head = [
        "impl",
        "variant",
        "deflate accepted",
        "client->server KB/s",
        "saved",
        "server->client KB/s",
        "saved",
        "server CPU %",
        "client CPU",
        "other % CPU0/CPU1",
        "error",
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
    ap.add_argument("experiments", nargs="+", choices=[*EXPERIMENTS, "all"])
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ",".join(IMPLS))
    ap.add_argument("--runs", type=int, default=1, help="repeat every measurement")
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
    experiments = list(EXPERIMENTS) if "all" in args.experiments else args.experiments
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
