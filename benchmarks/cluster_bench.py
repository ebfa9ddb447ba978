#!/usr/bin/env python3
"""Cluster benchmarks on 127.0.0.1: printd's cluster (N printd on one PostgreSQL schema and a
private redis-server) and, for the fan-out, Node socket.io clustered the same way
(N benchmarks/peers/socketio_peer.js --redis on @socket.io/redis-adapter and a private Redis).

Servers (printd or Node instances, their Redis, nginx) are pinned to CPU0 and the load clients
to CPU1, as benchmarks/run.py does; PostgreSQL is the machine's (127.0.0.1:5432). Every
measurement runs --runs times (default 3) on a fresh stack and the tables give the median and
the spread (min-max). Beside each figure: the machine's background load (load average, the CPU
other processes used over the window, the PostgreSQL backends serving our printd counted as
ours). A measurement that other work disturbed (> --max-foreign %) is repeated up to --retries
times. Records go to benchmarks/results/cluster.jsonl, logs to benchmarks/results/logs/.

Experiments:
  fanout    agents and dashboards spread over the instances; each agent sends one status of
            --payload-bytes every --interval s; newest-item and server-added latency at the
            dashboards, its computed floor, server CPU (sum of the instances), Redis CPU and
            the commands/s each design sends (INFO commandstats over the window)
  jobs      printd: job round trip (due -> job.completed at a dashboard of the instance that
            took the POST) for an agent on the same instance and on another, in one stream at
            --rate jobs/s
  failover  printd behind nginx: SIGKILL of the instance holding the most agents (--kill-agents
            through the front), time until its agents are back; then, on a fresh stack, Redis
            stopped for --outage-s with jobs flowing: how long jobs accepted meanwhile waited
  capacity  printd: RSS per agent connection on one instance at --levels, and the agents the
            3-instance cluster holds through nginx at --total-levels

    .venv/bin/python benchmarks/cluster_bench.py fanout --runs 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# benchmarks/run.py: pinning, child tracking, CPU accounting, the load client runner
import run as bench  # noqa: E402
from benchstats import Background, background_cell, cpu_seconds, floor_ms, pg_backends, spread  # noqa: E402

from printctl.clusterspec import parse_cluster  # noqa: E402
from printctl.deploy import instance_environment, render_site, write_nginx_prefix  # noqa: E402
from printctl.loadgen import stats  # noqa: E402

AGENTS_SCRIPT = HERE / "cluster_agents.py"
RESULTS_FILE = bench.RESULTS / "cluster.jsonl"
PG_URL = os.environ.get("PRINTD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_PORT = 5432
RECORDS: list[dict[str, Any]] = []


# ------------------------------------------------------------------------------------ the stack


class Proc:
    """One server process of the stack (printd, a Node instance, Redis, nginx)."""

    def __init__(self, name: str, port: int, proc: subprocess.Popen[Any], log: Path) -> None:
        self.name, self.port, self.proc, self.log = name, port, proc, log
        self.ps = psutil.Process(proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return []

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

    def alive(self) -> bool:
        return self.proc.poll() is None


def wait_http(url: str, timeout: float, proc: Proc) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start; see {proc.log}: {proc.log.read_text()[-600:]}")
        try:
            with urllib.request.urlopen(url + "/monitoring/health", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not healthy after {timeout:g} s; see {proc.log}")


class Redis:
    """A private redis-server without persistence (a restart comes back empty), pinned to CPU0."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = bench.free_port()
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = bench.LOGS / f"redis-{self.port}.log"
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.workdir), "--maxclients", "10000"]
        with open(log, "ab") as out:
            p = bench.spawn(cmd, bench.SERVER_CPU, stdout=out, stderr=subprocess.STDOUT)
        self.proc = Proc("redis", self.port, p, log)
        end = time.time() + 10
        while self.command("PING") != "PONG":
            if time.time() > end or not self.proc.alive():
                raise RuntimeError(f"redis-server did not start; see {log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what Redis holds is gone, as after a crash without persistence."""
        if self.proc is not None and self.proc.alive():
            self.proc.proc.kill()
            self.proc.proc.wait(10)

    def command(self, *words: str) -> str:
        """One command over a fresh connection (inline RESP); the reply as text, "" on failure."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(" ".join(words).encode() + b"\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if data[:1] in (b"+", b"-", b":") and data.endswith(b"\r\n"):
                        break
                    if data[:1] == b"$":
                        head, _, rest = data.partition(b"\r\n")
                        if len(rest) >= int(head[1:]) + 2:
                            break
        except OSError:
            return ""
        if data[:1] == b"$":
            return data.partition(b"\r\n")[2][:-2].decode()
        return data[1:].strip().decode()

    def snapshot(self) -> dict[str, Any]:
        """Calls per command so far (without our own INFO), bytes in/out, CPU."""
        calls: dict[str, int] = {}
        for line in self.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[8:].partition(":")
                fields = dict(kv.split("=", 1) for kv in rest.split(","))
                if name != "info":
                    calls[name] = int(fields["calls"])
        st = dict(line.split(":", 1) for line in self.command("INFO", "stats").splitlines() if ":" in line)
        return {
            "calls": calls,
            "net_in": int(st.get("total_net_input_bytes", 0)),
            "net_out": int(st.get("total_net_output_bytes", 0)),
            "cpu": self.proc.cpu_s() if self.proc else 0.0,
        }


class Stack:
    """What one measurement runs on: a private Redis, a fresh PostgreSQL schema, N instances of
    one design (printd or sio), optionally nginx in front. Everything stops in close()."""

    def __init__(self, args: argparse.Namespace, design: str, n: int, *, front: bool = False) -> None:
        self.args, self.design = args, design
        self.tmp = tempfile.TemporaryDirectory(prefix="printd-cluster-bench-")
        self.dir = Path(self.tmp.name)
        self.instances: list[Proc] = []
        self.nginx: Proc | None = None
        self.schema: str | None = None
        bench.LOGS.mkdir(parents=True, exist_ok=True)
        try:
            self.redis = Redis(self.dir / "redis")
            if design == "printd":
                self._start_printd(n, front)
            else:
                self._start_sio(n)
        except BaseException:
            self.close()
            raise

    def _start_printd(self, n: int, front: bool) -> None:
        import psycopg

        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.args.pg_url, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {self.schema}")
        sep = "&" if "?" in self.args.pg_url else "?"
        db_url = f"{self.args.pg_url}{sep}options=-csearch_path%3D{self.schema}"
        self.front_port = bench.free_port()
        raw = {
            "name": "bench",
            "mode": "development",
            "database": {"url": db_url},
            "redis": {"url": self.redis.url, "prefix": f"bench-{uuid.uuid4().hex[:6]}"},
            "nginx": {"listen": f"127.0.0.1:{self.front_port}"},
            "settings": {"log_level": "warning"},
            "instances": [{"id": f"printd-{i + 1}", "port": bench.free_port()} for i in range(n)],
        }
        spec = parse_cluster(raw)
        config = self.dir / "printd.toml"
        config.write_text('log_level = "warning"\n')
        base = {k: v for k, v in os.environ.items() if k not in bench.PRINTD_ENV_STRIP}
        for inst in spec.instances:
            data = self.dir / inst.id
            data.mkdir()
            env = base | instance_environment(
                spec,
                inst,
                data_dir=str(data),
                config_path=str(config),
                database_url=db_url,
                redis_url=self.redis.url,
                redis_prefix=spec.prefix,
            )
            env |= {"JWT_SECRET": self.args.secret, "PYTHONUNBUFFERED": "1"}
            log = bench.LOGS / f"cluster-{inst.id}-{inst.port}.log"
            with open(log, "ab") as out:
                p = bench.spawn(
                    [self.args.printd, "run"],
                    bench.SERVER_CPU,
                    env=env,
                    cwd=data,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.instances.append(Proc(inst.id, inst.port, p, log))
        for proc in self.instances:
            wait_http(proc.url, self.args.ready_timeout, proc)
        if front:
            self._start_nginx(spec)

    def _start_nginx(self, spec: Any) -> None:
        """The site printctl deploy renders, in printctl cluster up's nginx.conf, with room for
        the benchmark's connections: a proxied WebSocket takes two of nginx's connections."""
        prefix = self.dir / "nginx"
        site = render_site(spec, source="benchmarks/cluster_bench.py", access_log=str(prefix / "access.log"))
        conf = write_nginx_prefix(prefix, site)
        text = conf.read_text()
        procs = "worker_processes auto;\n"  # deploy sizes worker_connections to the fd limit itself
        if procs not in text:
            raise RuntimeError(f"printctl.deploy.write_nginx_prefix changed; cannot set workers: {conf}")
        patched = text.replace(procs, f"worker_processes {self.args.nginx_workers};\n")
        conf.write_text(patched)
        nginx = self.args.nginx
        log = bench.LOGS / f"nginx-{self.front_port}.log"
        with open(log, "ab") as out:
            p = bench.spawn(
                [nginx, "-p", str(prefix), "-c", str(conf)],
                bench.SERVER_CPU,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.nginx = Proc("nginx", self.front_port, p, log)
        wait_http(self.nginx.url, self.args.ready_timeout, self.nginx)

    def _start_sio(self, n: int) -> None:
        env = {**os.environ, "JWT_SECRET": self.args.secret}
        for i in range(n):
            port = bench.free_port()
            log = bench.LOGS / f"cluster-sio-{i + 1}-{port}.log"
            cmd = [self.args.node, str(bench.PEERS / "socketio_peer.js"), "--port", str(port)]
            cmd += ["--redis", self.redis.url, "--instance", f"sio-{i + 1}", "--batch-stamp"]
            with open(log, "ab") as out:
                p = bench.spawn(cmd, bench.SERVER_CPU, env=env, stdout=out, stderr=subprocess.STDOUT)
            self.instances.append(Proc(f"sio-{i + 1}", port, p, log))
        for proc in self.instances:
            end = time.time() + self.args.ready_timeout
            while '"ready"' not in proc.log.read_text():
                if time.time() > end or not proc.alive():
                    raise RuntimeError(
                        f"{proc.name} not ready; see {proc.log}: {proc.log.read_text()[-600:]}"
                    )
                time.sleep(0.1)

    def server_cpu(self) -> dict[str, float]:
        return {p.name: p.cpu_s() for p in self.instances}

    def db_backends(self) -> set[int]:
        """The PostgreSQL backends serving our printd instances (their CPU is the design's, not
        the machine's background): matched by the instances' client ports."""
        return pg_backends([p for inst in self.instances for p in inst.tree()], PG_PORT)

    def close(self) -> None:
        for p in [*([self.nginx] if self.nginx else []), *self.instances]:
            bench.stop(p.proc, wait=5)
        if getattr(self, "redis", None) is not None and self.redis.proc is not None:
            self.redis.kill()
        if self.schema:
            import psycopg

            try:
                with psycopg.connect(self.args.pg_url, autocommit=True) as c:
                    c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            except psycopg.Error as e:
                print(f"warning: could not drop schema {self.schema}: {e}", file=sys.stderr)
        self.tmp.cleanup()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ measuring


def own_cpu_s(extra: set[int]) -> float:
    """CPU time of this process, every process under it (reaped ones too) and `extra`."""
    me = psutil.Process()
    total = 0.0
    try:
        procs = [me, *me.children(recursive=True)]
    except psutil.Error:
        procs = [me]
    for p in procs + [psutil.Process(pid) for pid in extra if psutil.pid_exists(pid)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if p is me else 0.0)
        except psutil.Error:
            pass
    return total


class Window:
    """The stack and the machine over one measurement window."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.db = stack.db_backends()
        self.own0 = own_cpu_s(self.db)
        # load average, /proc/stat and the CPU of processes not ours (our PostgreSQL backends are ours)
        self.bg = Background(extra=self.db)
        self.t0 = self.bg.t0
        self.cpu0 = stack.server_cpu()
        self.redis0 = stack.redis.snapshot()
        self.db0 = cpu_seconds(self.db)

    def end(self) -> dict[str, Any]:
        t1 = time.time()
        dt = max(1e-6, t1 - self.t0)
        cpu1 = self.stack.server_cpu()
        redis1 = self.stack.redis.snapshot()
        calls = {
            k: round((v - self.redis0["calls"].get(k, 0)) / dt, 1)
            for k, v in redis1["calls"].items()
            if v - self.redis0["calls"].get(k, 0) > 0
        }
        per = {k: round(100 * (cpu1[k] - self.cpu0.get(k, 0.0)) / dt, 1) for k in cpu1}
        own = 100 * (own_cpu_s(self.db) - self.own0) / dt
        return {
            "window_s": round(dt, 2),
            "server_cpu_pct": round(sum(per.values()), 1),
            "instance_cpu_pct": per,
            "redis_cpu_pct": round(100 * (redis1["cpu"] - self.redis0["cpu"]) / dt, 1),
            "redis_cmds_per_s": round(sum(calls.values()), 1),
            "redis_cmds": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
            "redis_in_KBps": round((redis1["net_in"] - self.redis0["net_in"]) / dt / 1000, 1),
            "redis_out_KBps": round((redis1["net_out"] - self.redis0["net_out"]) / dt / 1000, 1),
            "db_cpu_pct": round(100 * (cpu_seconds(self.db) - self.db0) / dt, 1),
            # the load average; the busy time of both cores (of 200) that is neither ours nor
            # softirq (bounded, it sees processes too short-lived to be listed); run.py's
            # per-process foreign CPU (children other processes reaped over the window count
            # whole, so a finishing test run can push it past 200); softirq, per core, steal
            "background": self.bg.end(own_pct=own),
        }


class AgentsRun:
    """A cluster_agents.py process on CPU1 and its JSON lines."""

    def __init__(self, args: argparse.Namespace, mode: str, *opts: Any) -> None:
        cmd = [bench.PY, str(AGENTS_SCRIPT), mode, *[str(o) for o in opts]]
        env = {**os.environ, "JWT_SECRET": args.secret}
        self.proc = bench.spawn(cmd, bench.CLIENT_CPU, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self.buf = b""
        self.last: dict[str, dict[str, Any]] = {}

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            pass

    def drain(self) -> None:
        """Read what has arrived; keep the latest line of each phase."""
        try:
            while data := os.read(self.proc.stdout.fileno(), 1 << 20):  # type: ignore[union-attr]
                self.buf += data
        except BlockingIOError:
            pass
        while b"\n" in self.buf:
            raw, _, self.buf = self.buf.partition(b"\n")
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            self.last[obj.get("phase", "")] = obj

    def wait(self, phase: str, timeout: float) -> dict[str, Any]:
        end = time.time() + timeout
        while time.time() < end:
            self.drain()
            if phase in self.last:
                return self.last.pop(phase)
            if self.proc.poll() is not None:
                self.drain()
                return self.last.pop(
                    phase, {"error": f"cluster_agents exited ({self.proc.returncode}) before {phase}"}
                )
            time.sleep(0.05)
        return {"error": f"no {phase} line within {timeout:g} s"}

    def stop(self) -> dict[str, Any]:
        self.send("stop")
        res = self.wait("result", 60)
        bench.stop(self.proc, wait=5)
        return res


def pct(seconds: list[float]) -> dict[str, Any]:
    """n, p50/p90/p99/p99.9, max and mean in milliseconds."""
    return stats.summarize(stats.histogram(seconds))


# ------------------------------------------------------------------------------------ experiments


class Duck:
    """What run.ClientRun needs of a server: a port and which framing to speak."""

    def __init__(self, port: int, impl: str) -> None:
        self.port, self.impl = port, impl


def exp_fanout(args: argparse.Namespace, design: str) -> dict[str, Any]:
    with Stack(args, design, args.instances) as st:
        ports = [p.port for p in st.instances]
        per_inst = math.ceil((args.agents + args.dashboards) / len(ports))
        procs = len(ports) * max(1, math.ceil(per_inst / bench.CONNS_PER_CLIENT_PROC))
        opts: list[Any] = ["--ports", ",".join(map(str, ports)), "--agents", args.agents]
        opts += ["--dashboards", args.dashboards, "--companies", args.companies, "--interval", args.interval]
        opts += ["--payload-bytes", args.payload_bytes, "--duration", args.duration, "--warmup", args.warmup]
        opts += ["--concurrency", args.in_flight, "--procs", procs]
        duck: Any = Duck(ports[0], "sio" if design == "sio" else "printd")
        client = bench.ClientRun("load", duck, args, *opts)
        timeout = 240 + args.agents / 50
        ready = client.line("ready", timeout)
        if ready.get("error") or ready.get("fail"):
            bench.stop(client.proc)
            return {"error": ready.get("error") or "connections failed", "errors": ready.get("errors")}
        win = client.line("window", 60)
        if win.get("error"):
            return {"error": win["error"]}
        time.sleep(max(0.0, win["m0"] - time.time()))
        w = Window(st)
        time.sleep(max(0.0, win["m1"] - time.time()))
        meas = w.end()
        res = client.line("result", timeout)
        client.finish()
        sizes = res.get("batch_sizes") or {}
        period = args.batch_ms / 1000
        return {
            **meas,
            "agents": args.agents,
            "dashboards": args.dashboards,
            "instances": len(ports),
            "status_per_s": res.get("status_per_s"),
            "items_rx": res.get("items_rx"),
            "items_expected": res.get("items_expected"),
            "batches_rx": res.get("batches_rx"),
            "items_per_batch": round((res.get("items_rx") or 0) / max(1, res.get("batches_rx") or 1), 2),
            "latency_newest": res.get("latency_newest"),
            "latency_server_added": res.get("latency_server_added"),
            "floor_newest": {"p50_ms": floor_ms(sizes, period, 0.5), "p99_ms": floor_ms(sizes, period, 0.99)},
            "client_cpu_pct": res.get("client_cpu_pct"),
            "errors": res.get("errors"),
            "client_error": res.get("error"),
        }


def exp_jobs(args: argparse.Namespace, design: str) -> dict[str, Any]:
    with Stack(args, "printd", args.instances) as st:
        urls = ",".join(p.url for p in st.instances)
        run = AgentsRun(
            args,
            "jobs",
            "--urls",
            urls,
            "--agents-per-instance",
            args.agents_per_instance,
            "--rate",
            args.rate,
            "--warmup",
            args.warmup,
            "--duration",
            args.duration,
            "--max-s",
            args.warmup + args.duration + 240,
        )
        ready = run.wait("ready", 120)
        if not ready.get("ok"):
            bench.stop(run.proc)
            return {"error": ready.get("error") or "agents not registered", "errors": ready.get("errors")}
        w = Window(st)
        res = run.wait("result", args.warmup + args.duration + 60)
        meas = w.end()
        bench.stop(run.proc)
        same, cross = res.get("same") or {}, res.get("cross") or {}
        s99 = (same.get("round_trip") or {}).get("p99_ms")
        c99 = (cross.get("round_trip") or {}).get("p99_ms")
        return {
            **meas,
            "rate": args.rate,
            "agents_per_instance": args.agents_per_instance,
            "sent": res.get("sent"),
            "same": same,
            "cross": cross,
            "cross_over_same_p99": round(c99 / s99, 2) if s99 and c99 else None,
            "client_cpu_pct": res.get("client_cpu_pct"),
            "errors": res.get("errors"),
            "client_error": res.get("error"),
        }


def holders(args: argparse.Namespace, url: str, first: int, n: int, job_rate: float = 0.0) -> list[AgentsRun]:
    """n agents through `url`, split over processes of at most CONNS_PER_CLIENT_PROC each."""
    procs = max(1, math.ceil(n / bench.CONNS_PER_CLIENT_PROC))
    out = []
    for i in range(procs):
        lo, hi = first + n * i // procs, first + n * (i + 1) // procs
        out.append(
            AgentsRun(
                args,
                "hold",
                "--url",
                url,
                "--agents",
                hi - lo,
                "--first",
                lo,
                "--companies",
                args.companies_hold,
                "--job-rate",
                job_rate / procs,
                "--max-s",
                args.max_hold,
            )
        )
    return out


def wait_all(runs: list[AgentsRun], phase: str, timeout: float) -> list[dict[str, Any]]:
    return [r.wait(phase, timeout) for r in runs]


def open_by_instance(runs: list[AgentsRun]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in runs:
        r.drain()
        for k, v in (r.last.get("progress") or {}).get("open_by_instance", {}).items():
            out[k] = out.get(k, 0) + v
    return out


def job_waits(jobs: list[list[Any]], t0: float, t1: float) -> dict[str, Any]:
    """accept -> printed of the jobs accepted in [t0, t1): [due, accepted, printed, tries] each."""
    waits, not_printed, accepted = [], 0, 0
    for _due, acc, printed, _tries in jobs:
        if not acc or not t0 <= acc < t1:
            continue
        accepted += 1
        if printed is None:
            not_printed += 1
        else:
            waits.append(max(0.0, printed - acc))
    return {"accepted": accepted, "not_printed": not_printed, "accept_to_printed": pct(waits)}


def exp_failover_kill(args: argparse.Namespace, design: str) -> dict[str, Any]:
    with Stack(args, "printd", args.instances, front=True) as st:
        assert st.nginx is not None
        runs = holders(args, st.nginx.url, 0, args.kill_agents, args.kill_job_rate)
        try:
            ready = wait_all(runs, "ready", 120 + args.kill_agents / 20)
            if any(r.get("error") for r in ready):
                return {"error": "agents did not all register", "ready": ready}
            for r in runs:
                r.send("jobs")
            time.sleep(args.settle)
            before = open_by_instance(runs)
            victim_id = max(before, key=lambda k: before[k])
            victim = next(p for p in st.instances if p.name == victim_id)
            w = Window(st)
            t_kill = time.time()
            victim.proc.send_signal(signal.SIGKILL)
            end = t_kill + args.recovery_timeout
            while time.time() < end:
                time.sleep(0.5)
                now_open = open_by_instance(runs)
                if sum(now_open.values()) >= args.kill_agents and not now_open.get(victim_id):
                    break
            t_back = time.time()
            time.sleep(args.settle)
            meas = w.end()
        finally:
            results = [r.stop() for r in runs]
    events = [e for r in results for e in r.get("events") or []]
    jobs = [j for r in results for j in r.get("jobs") or []]
    back, noticed, orphans = orphan_times(events, t_kill, victim_id)
    return {
        **meas,
        "agents": args.kill_agents,
        "before_by_instance": before,
        "killed": victim_id,
        "orphans": orphans,
        "back": len(back),
        "back_ms": pct(back),
        "noticed_ms": pct(noticed),
        "all_back_within_s": round(t_back - t_kill, 2),
        "jobs_after_kill": job_waits(jobs, t_kill, t_kill + 10),
        "jobs_before": job_waits(jobs, 0, t_kill),
        "errors": merge_errors(results),
    }


def orphan_times(events: list[list[Any]], t_kill: float, victim: str) -> tuple[list[float], list[float], int]:
    """Per agent that was on the victim at t_kill: s until its connection closed, and until a
    hello from another instance."""
    by_agent: dict[int, list[list[Any]]] = {}
    for e in events:
        by_agent.setdefault(e[0], []).append(e)
    back, noticed, orphans = [], [], 0
    for evs in by_agent.values():
        evs.sort(key=lambda e: e[2])
        where = None
        for _i, kind, t, what in evs:
            if t >= t_kill:
                break
            where = what if kind == "open" else None
        if where != victim:
            continue
        orphans += 1
        closed = next((e[2] for e in evs if e[2] >= t_kill and e[1] == "close"), None)
        if closed is not None:
            noticed.append(closed - t_kill)
        reopened = next((e[2] for e in evs if e[2] >= t_kill and e[1] == "open" and e[3] != victim), None)
        if reopened is not None:
            back.append(reopened - t_kill)
    return back, noticed, orphans


def merge_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("errors") or {}).items():
            out[k] = out.get(k, 0) + v
        if r.get("error"):
            out[r["error"]] = out.get(r["error"], 0) + 1
    return out


def exp_failover_redis(args: argparse.Namespace, design: str) -> dict[str, Any]:
    with Stack(args, "printd", args.instances, front=True) as st:
        assert st.nginx is not None
        runs = holders(args, st.nginx.url, 0, args.outage_agents, args.outage_job_rate)
        try:
            ready = wait_all(runs, "ready", 120 + args.outage_agents / 20)
            if any(r.get("error") for r in ready):
                return {"error": "agents did not all register", "ready": ready}
            for r in runs:
                r.send("jobs")
            time.sleep(args.settle)
            w = Window(st)
            t_stop = time.time()
            st.redis.kill()
            time.sleep(args.outage_s)
            st.redis.start()
            t_start = time.time()
            time.sleep(args.outage_after)
            meas = w.end()
        finally:
            results = [r.stop() for r in runs]
    jobs = [j for r in results for j in r.get("jobs") or []]
    return {
        **meas,
        "agents": args.outage_agents,
        "job_rate": args.outage_job_rate,
        "outage_s": round(t_start - t_stop, 2),
        "jobs_during_outage": job_waits(jobs, t_stop, t_start),
        "jobs_before": job_waits(jobs, 0, t_stop),
        "jobs_after": job_waits(jobs, t_start, float("inf")),
        "errors": merge_errors(results),
    }


def exp_capacity_one(args: argparse.Namespace, design: str) -> dict[str, Any]:
    """RSS per agent on one clustered instance (Redis and PostgreSQL as in the cluster)."""
    levels = [int(x) for x in args.levels.split(",")]
    out: dict[str, Any] = {"levels": {}}
    with Stack(args, "printd", 1) as st:
        inst = st.instances[0]
        time.sleep(1.0)
        base = inst.rss_kb()
        w = Window(st)
        out["base_MB"] = round(base / 1024, 1)
        runs: list[AgentsRun] = []
        have = 0
        try:
            for level in levels:
                step = holders(args, inst.url, have, level - have)
                runs += step
                ready = wait_all(step, "ready", 120 + (level - have) / 20)
                time.sleep(args.settle)
                held = sum(open_by_instance(runs).values())
                rss = inst.rss_kb()
                out["levels"][str(level)] = {
                    "held": held,
                    "rss_MB": round(rss / 1024, 1),
                    "KB_per_conn": round((rss - base) / max(1, held), 2),
                    "ready_errors": [r.get("error") for r in ready if r.get("error")],
                }
                have = level
                if held < level:
                    break
            out["most_held"] = max(
                (int(k) for k, v in out["levels"].items() if v["held"] >= int(k)), default=0
            )
            out.update(w.end())  # CPU, Redis and the background load over the whole ramp
        finally:
            results = [r.stop() for r in runs]
    out["errors"] = merge_errors(results)
    return out


def exp_capacity_total(args: argparse.Namespace, design: str) -> dict[str, Any]:
    """Agents the whole cluster holds through nginx."""
    levels = [int(x) for x in args.total_levels.split(",")]
    out: dict[str, Any] = {"levels": {}}
    with Stack(args, "printd", args.instances, front=True) as st:
        assert st.nginx is not None
        w = Window(st)
        runs: list[AgentsRun] = []
        have = 0
        try:
            for level in levels:
                step = holders(args, st.nginx.url, have, level - have)
                runs += step
                wait_all(step, "ready", 120 + (level - have) / 20)
                time.sleep(args.settle)
                by_inst = open_by_instance(runs)
                out["levels"][str(level)] = {
                    "held": sum(by_inst.values()),
                    "by_instance": by_inst,
                    "instance_rss_MB": {p.name: round(p.rss_kb() / 1024, 1) for p in st.instances},
                    "nginx_rss_MB": round(st.nginx.rss_kb() / 1024, 1),
                }
                have = level
                if sum(by_inst.values()) < level:
                    break
            out["most_held"] = max(
                (int(k) for k, v in out["levels"].items() if v["held"] >= int(k)), default=0
            )
            out.update(w.end())  # CPU, Redis and the background load over the whole ramp
        finally:
            results = [r.stop() for r in runs]
    out["errors"] = merge_errors(results)
    return out


# (experiment, variant) -> (measure, designs it runs for)
MEASURES: dict[str, list[tuple[str, Callable[[argparse.Namespace, str], dict[str, Any]]]]] = {
    "fanout": [("fanout", exp_fanout)],
    "jobs": [("jobs", exp_jobs)],
    "failover": [("kill", exp_failover_kill), ("redis", exp_failover_redis)],
    "capacity": [("one instance", exp_capacity_one), ("cluster via nginx", exp_capacity_total)],
}

# the figures each table shows (median [min-max] over the runs): (column, path in the record)
FIGURES: dict[str, list[tuple[str, str]]] = {
    "fanout": [
        ("newest p50 ms", "latency_newest.p50_ms"),
        ("newest p99 ms", "latency_newest.p99_ms"),
        ("floor p99 ms", "floor_newest.p99_ms"),
        ("server-added p50 ms", "latency_server_added.p50_ms"),
        ("server-added p99 ms", "latency_server_added.p99_ms"),
        ("server CPU % (sum)", "server_cpu_pct"),
        ("Redis CPU %", "redis_cpu_pct"),
        ("Redis cmds/s", "redis_cmds_per_s"),
        ("items/batch", "items_per_batch"),
        ("items rx", "items_rx"),
        ("items expected", "items_expected"),
    ],
    "jobs": [
        ("same p50 ms", "same.round_trip.p50_ms"),
        ("same p99 ms", "same.round_trip.p99_ms"),
        ("cross p50 ms", "cross.round_trip.p50_ms"),
        ("cross p99 ms", "cross.round_trip.p99_ms"),
        ("cross/same p99", "cross_over_same_p99"),
        ("not seen", "cross.not_seen"),
        ("server CPU %", "server_cpu_pct"),
        ("PostgreSQL CPU %", "db_cpu_pct"),
        ("Redis cmds/s", "redis_cmds_per_s"),
    ],
    "failover": [
        ("orphans", "orphans"),
        ("back", "back"),
        ("back p50 ms", "back_ms.p50_ms"),
        ("back p99 ms", "back_ms.p99_ms"),
        ("back max ms", "back_ms.max_ms"),
        ("outage jobs", "jobs_during_outage.accepted"),
        ("waited p50 ms", "jobs_during_outage.accept_to_printed.p50_ms"),
        ("waited p99 ms", "jobs_during_outage.accept_to_printed.p99_ms"),
        ("waited max ms", "jobs_during_outage.accept_to_printed.max_ms"),
        ("not printed", "jobs_during_outage.not_printed"),
    ],
    "capacity": [
        ("most held", "most_held"),
        ("base MB", "base_MB"),
    ],
}


def get(rec: dict[str, Any], path: str) -> Any:
    node: Any = rec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def markdown() -> str:
    parts = []
    for exp, figures in FIGURES.items():
        recs = [r for r in RECORDS if r["exp"] == exp]
        if not recs:
            continue
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in recs:
            groups.setdefault((r["variant"], r["design"]), []).append(r)
        head = [
            "variant",
            "design",
            "runs",
            *[f for f, _ in figures],
            "background (median [min–max])",
            "errors",
        ]
        rows = []
        for (variant, design), rs in groups.items():
            ok = [r for r in rs if not r.get("error")]
            cells = [spread([get(r, p) for r in ok]) for _, p in figures]
            errs = "; ".join(sorted({str(r.get("error")) for r in rs if r.get("error")}))[:120]
            bg = background_cell([r.get("background") or {} for r in ok])
            rows.append([variant, design, f"{len(ok)}/{len(rs)}", *cells, bg, errs])
        parts.append(f"### {exp}\n\n" + bench.table(head, rows))
        if exp == "capacity":
            parts.append(capacity_levels(recs))
    return "\n\n".join(parts) + "\n"


def capacity_levels(recs: list[dict[str, Any]]) -> str:
    rows = []
    for r in recs:
        for level, v in (r.get("levels") or {}).items():
            rows.append(
                [
                    r["variant"],
                    str(r["run"]),
                    level,
                    str(v.get("held")),
                    str(v.get("KB_per_conn", "–")),
                    str(v.get("rss_MB", v.get("instance_rss_MB", "–"))),
                    str(v.get("by_instance", "–")),
                    str(v.get("nginx_rss_MB", "–")),
                ]
            )
    head = ["variant", "run", "agents", "held", "KB/conn", "RSS MB", "by instance", "nginx MB"]
    return "#### capacity by level\n\n" + bench.table(head, rows)


def record(
    exp: str, variant: str, design: str, run: int, res: dict[str, Any], args: argparse.Namespace
) -> None:
    rec = {
        "exp": exp,
        "variant": variant,
        "design": design,
        "run": run,
        "run_id": args.run_id,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quiet_before": getattr(args, "quiet_state", {}),
        **res,
    }
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)


def measure(
    args: argparse.Namespace, exp: str, variant: str, fn: Callable[..., dict[str, Any]], design: str, run: int
) -> None:
    """One figure: wait for a quiet machine, measure, repeat while other work disturbed it."""
    res: dict[str, Any] = {}
    for attempt in range(1, args.retries + 2):
        args.quiet_state = bench.wait_quiet(args)
        try:
            res = fn(args, design)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        res["attempt"] = attempt
        bg = res.get("background") or {}
        foreign = max(bg.get("other_busy_pct", 0.0), bg.get("foreign_cpu_pct", 0.0))
        if res.get("error") or foreign <= args.max_foreign or attempt > args.retries:
            break
        print(
            f"other work used {foreign} % CPU during the measurement: repeating", file=sys.stderr, flush=True
        )
    record(exp, variant, design, run, res, args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", choices=[*MEASURES, "all"])
    ap.add_argument(
        "--runs", type=int, default=3, help="repeat every measurement; tables give median and spread"
    )
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--designs", default="printd,sio", help="fanout: printd and/or sio")
    ap.add_argument("--agents", type=int, default=5000, help="fanout: agents")
    ap.add_argument("--dashboards", type=int, default=6, help="fanout: dashboard d watches company d")
    ap.add_argument("--companies", type=int, default=50, help="fanout: companies")
    ap.add_argument("--interval", type=float, default=1.0, help="fanout: s between one agent's updates")
    ap.add_argument("--payload-bytes", type=int, default=2000, help="fanout: size of one status")
    ap.add_argument("--batch-ms", type=float, default=100.0, help="the servers' batch window (for the floor)")
    ap.add_argument("--in-flight", type=int, default=500, help="handshakes in flight")
    ap.add_argument("--rate", type=float, default=100.0, help="jobs: jobs/s")
    ap.add_argument("--agents-per-instance", type=int, default=10, help="jobs: agents on each instance")
    ap.add_argument("--warmup", type=float, default=5.0, help="fanout/jobs: warm-up before the window")
    ap.add_argument("--duration", type=float, default=20.0, help="fanout/jobs: the window")
    ap.add_argument("--kill-agents", type=int, default=3300, help="failover: agents through nginx")
    ap.add_argument("--kill-job-rate", type=float, default=20.0, help="failover: jobs/s during the kill")
    ap.add_argument(
        "--recovery-timeout", type=float, default=60.0, help="failover: wait this long for agents"
    )
    ap.add_argument("--outage-agents", type=int, default=300, help="failover: agents during the Redis outage")
    ap.add_argument("--outage-job-rate", type=float, default=20.0, help="failover: jobs/s during the outage")
    ap.add_argument("--outage-s", type=float, default=10.0, help="failover: how long Redis stays down")
    ap.add_argument(
        "--outage-after", type=float, default=15.0, help="failover: watch this long after Redis is back"
    )
    ap.add_argument(
        "--companies-hold", type=int, default=10, help="failover/capacity: companies of the agents"
    )
    ap.add_argument("--levels", default="1000,5000,10000", help="capacity: agents on one instance")
    ap.add_argument("--total-levels", default="3000,6000,12000", help="capacity: agents through nginx")
    ap.add_argument("--settle", type=float, default=5.0, help="s to let a level or a phase settle")
    ap.add_argument(
        "--max-hold", type=float, default=900.0, help="a holder process ends by then whatever happens"
    )
    ap.add_argument("--nginx-workers", type=int, default=4)
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--printd", default=str(Path(bench.PY).parent / "printd"))
    ap.add_argument("--node", default="node")
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this long for an idle machine")
    ap.add_argument("--quiet-busy", type=float, default=15.0, help="busy %% per CPU that counts as idle")
    ap.add_argument("--max-foreign", type=float, default=10.0, help="repeat when other work used more CPU %%")
    ap.add_argument("--retries", type=int, default=2, help="repeats allowed per disturbed measurement")
    ap.add_argument("--markdown", metavar="PATH", help="also write the tables to this file")
    args = ap.parse_args()
    if args.warmup + args.duration > 300 or args.outage_s > 120 or args.recovery_timeout > 300:
        ap.error("keep runs bounded: warm-up + duration <= 300 s, outage <= 120 s, recovery <= 300 s")
    if max(args.agents, args.kill_agents, args.outage_agents) > 20000 or args.rate > 5000:
        ap.error("keep runs bounded: at most 20000 agents and 5000 jobs/s")
    designs = [d for d in args.designs.split(",") if d]
    if any(d not in ("printd", "sio") for d in designs):
        ap.error("--designs: printd and/or sio")
    experiments = list(MEASURES) if "all" in args.experiments else args.experiments
    args.secret = secrets.token_hex(32)
    args.run_id = time.strftime("%Y%m%d-%H%M%S")
    if bench.can_pin():
        os.sched_setaffinity(0, {bench.CLIENT_CPU})
    else:
        print("warning: fewer than 2 CPUs: servers and clients are not pinned apart", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if "fanout" in experiments and "sio" in designs:
            if not (bench.PEERS / "node_modules" / "@socket.io" / "redis-adapter").is_dir():
                subprocess.run(
                    ["npm", "install", "--prefix", str(bench.PEERS), "--no-audit", "--no-fund"],
                    check=True,
                    timeout=600,
                )
        for exp in experiments:
            for run in range(args.runs):
                for variant, fn in MEASURES[exp]:
                    for design in designs if exp == "fanout" else ["printd"]:
                        measure(args, exp, variant, fn, design, run)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        bench.stop_all()
    md = markdown()
    print("\n" + md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
