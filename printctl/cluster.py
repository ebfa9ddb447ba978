"""`printctl cluster up / down / ls`: the deployment's layout as local processes (N printd behind
nginx on loopback), for demos, drills and benchmarks; and `printctl health --cluster`.

Everything a local cluster is lives in one state directory (default ./var/cluster): the process
records (`cluster.json`, and a pidfile each in run/), logs in logs/, each instance's data
directory, nginx's prefix. A process counts as ours only while its pid has the start time we
recorded, so `down` never signals a recycled pid. How each process was started is kept too
(run/<name>.launch.json), so that `printctl failover-test` restarts what it stopped exactly as
`up` started it (`restart`).

For `failover-test`, the cluster can own its dependencies: `--private-redis` (a redis-server on a
free loopback port, no persistence: it comes back empty, as production's does) and `--db-proxy`
(a TCP proxy process between the instances and PostgreSQL that can be cut, printctl.faults.proxy).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import orjson
import psutil
import tomli_w
import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from printctl.clusterspec import (
    DEFAULT_REDIS_URL,
    ClusterFileError,
    ClusterSpec,
    InstanceSpec,
    NginxSpec,
    load_cluster_file,
)
from printctl.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JsonOpt,
    console,
    emit_json,
    fail,
    get_json,
)
from printctl.deploy import default_printd, instance_environment, render_site, write_nginx_prefix
from printctl.faults.proxy import read_state
from printctl.health import STATUS_COLOURS, _duration, fetch_health

DEFAULT_STATE_DIR = Path("var/cluster")
STATE_FILE = "cluster.json"
DEFAULT_FRONT_PORT = 8080
#: processes the instances depend on: stopped after them
DEPENDENCIES = ("redis", "db-proxy")

app = typer.Typer(
    help="A local cluster: N printd behind nginx on loopback (up, down, ls).", no_args_is_help=True
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Cluster description (instances, ports, Redis, database).", show_default=False
    ),
]
StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Pidfiles, logs and data of the local cluster.")
]


@dataclass(frozen=True, slots=True)
class Process:
    name: str
    kind: str  # "printd", "nginx", or a dependency: "redis", "db-proxy"
    pid: int
    create_time: float
    url: str
    log: str

    def alive(self) -> bool:
        """Still the process we started (not a recycled pid) and not a zombie."""
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


@dataclass(frozen=True, slots=True)
class LocalCluster:
    state_dir: Path
    front_url: str
    redis_prefix: str
    processes: tuple[Process, ...] = ()

    def save(self) -> None:
        run = self.state_dir / "run"
        run.mkdir(parents=True, exist_ok=True)
        for proc in self.processes:
            (run / f"{proc.name}.pid").write_text(f"{proc.pid}\n")
        body = {k: v for k, v in asdict(self).items() if k != "state_dir"}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> LocalCluster | None:
        try:
            raw = orjson.loads((state_dir / STATE_FILE).read_bytes())
            return cls(
                state_dir=state_dir,
                front_url=raw["front_url"],
                redis_prefix=raw["redis_prefix"],
                processes=tuple(Process(**p) for p in raw["processes"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterFileError(
                f"{state_dir / STATE_FILE}: unreadable ({exc}); remove it by hand"
            ) from None

    def forget(self) -> None:
        for proc in self.processes:
            for suffix in ("pid", "launch.json", "state"):
                (self.state_dir / "run" / f"{proc.name}.{suffix}").unlink(missing_ok=True)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def process(self, name: str) -> Process:
        found = next((p for p in self.processes if p.name == name), None)
        if found is None:
            raise StartFailed(f"the local cluster in {self.state_dir} has no process {name!r}")
        return found

    def with_process(self, proc: Process) -> LocalCluster:
        """This record with `proc` in place of the process of its name (or added)."""
        others = tuple(p for p in self.processes if p.name != proc.name)
        if len(others) == len(self.processes):
            return replace(self, processes=(*self.processes, proc))
        return replace(self, processes=tuple(proc if p.name == proc.name else p for p in self.processes))


@dataclass(frozen=True, slots=True)
class Launch:
    """How `up` started one process. Kept in run/<name>.launch.json, mode 0600 (the environment
    holds the JWT secret), so a process stopped on purpose comes back the same: command, port,
    environment. `env` is what the cluster sets over the caller's environment."""

    name: str
    kind: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    url: str

    def save(self, state_dir: Path) -> None:
        path = state_dir / "run" / f"{self.name}.launch.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, state_dir: Path, name: str) -> Launch:
        path = state_dir / "run" / f"{name}.launch.json"
        try:
            raw = orjson.loads(path.read_bytes())
            return cls(**{**raw, "argv": tuple(raw["argv"])})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StartFailed(f"{path}: cannot tell how {name} was started ({exc})") from None


class StartFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def local_spec(config: Path | None, instances: int | None, front_port: int | None) -> ClusterSpec:
    """The layout to run: the cluster file's, or N instances on free loopback ports."""
    if config is not None:
        spec = load_cluster_file(config)
        if instances is not None and instances != len(spec.instances):
            raise ClusterFileError(
                f"--instances {instances}: {config} describes {len(spec.instances)}; drop one"
            )
    else:
        count = instances or 3
        spec = ClusterSpec(
            name="printd",
            mode="development",
            instances=tuple(InstanceSpec(id=f"printd-{n}", port=free_port()) for n in range(1, count + 1)),
            nginx=NginxSpec(port=DEFAULT_FRONT_PORT),
        )
    if front_port is not None:
        spec = replace(spec, nginx=replace(spec.nginx, port=front_port or free_port()))
    if spec.nginx.port < 1024:
        raise ClusterFileError(
            f"nginx port {spec.nginx.port}: a local cluster binds ports from 1024 up (--port)"
        )
    if spec.nginx.host not in (None, "127.0.0.1", "::1", "localhost"):
        raise ClusterFileError(f"nginx.listen: a local cluster listens on loopback, not {spec.nginx.host}")
    return replace(spec, nginx=replace(spec.nginx, host=spec.nginx.host or "127.0.0.1"))


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_processes(processes: tuple[Process, ...], timeout: float) -> dict[str, str]:
    """SIGTERM (printd drains, nginx stops), then SIGKILL what is left after `timeout`.
    Returns name -> 'stopped' | 'killed' | 'not running' | 'still running'."""
    result = {p.name: "not running" for p in processes if not p.alive()}
    running = [p for p in processes if p.name not in result]
    for proc in running:
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)  # one paused on purpose (failover-test) must act on it
    for sig, outcome, wait in ((None, "stopped", timeout), (signal.SIGKILL, "killed", 5.0)):
        if sig is not None:
            for proc in running:
                if proc.alive():
                    os.kill(proc.pid, sig)
        deadline = time.monotonic() + wait
        while running and time.monotonic() < deadline:
            for proc in [p for p in running if not p.alive()]:
                result[proc.name] = outcome
                running.remove(proc)
            time.sleep(0.05)
    for proc in running:
        result[proc.name] = "still running"
    return result


def _stop_all(processes: tuple[Process, ...], timeout: float) -> dict[str, str]:
    """printd and nginx first (they drain while Redis and the database still answer), then the
    cluster's own Redis and database proxy."""
    first = tuple(p for p in processes if p.kind not in DEPENDENCIES)
    return stop_processes(first, timeout) | stop_processes(
        tuple(p for p in processes if p.kind in DEPENDENCIES), timeout
    )


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/monitoring/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def redis_answers(url: str) -> bool:
    """PING answered at redis://HOST:PORT/..."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def proxy_state_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.state"


def dependency_status(state_dir: Path, proc: Process) -> str:
    """ok, cut (the database proxy refuses connections on purpose), or unreachable."""
    if proc.kind == "redis":
        return "ok" if redis_answers(proc.url) else "unreachable"
    state = read_state(proxy_state_file(state_dir, proc.name))
    return {"up": "ok", "down": "cut"}.get(state or "", "unreachable")


def ready(state_dir: Path, proc: Process) -> bool:
    if proc.kind in DEPENDENCIES:
        return dependency_status(state_dir, proc) == "ok"
    return is_healthy(proc.url)


def proxied_database(database_url: str) -> tuple[str, int]:
    """The PostgreSQL server (host, port) a DATABASE_URL names, for --db-proxy to stand in
    front of; ValueError when it is not one TCP host."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("--db-proxy needs DATABASE_URL=postgresql://USER@HOST:PORT/DB")
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError("--db-proxy needs one HOST:PORT in DATABASE_URL (not a list of hosts)") from None
    host = parts.hostname
    if not host or "host" in parse_qs(parts.query) or "hostaddr" in parse_qs(parts.query):
        raise ValueError("--db-proxy needs DATABASE_URL's server as HOST:PORT in the URL (not a Unix socket)")
    return host, port


def via_proxy(database_url: str, port: int) -> str:
    """DATABASE_URL with its server replaced by the proxy on 127.0.0.1:port (user, password,
    database and options kept)."""
    parts = urlsplit(database_url)
    user, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{port}"))


def spawn(cluster: LocalCluster, launch: Launch) -> tuple[LocalCluster, Process]:
    """Start one process of the cluster, in a session of its own (a Ctrl-C at the terminal is
    not for it), and record it in place of an earlier process of that name."""
    state_dir = cluster.state_dir
    log = state_dir / "logs" / f"{launch.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PRINTD_CONFIG")}
    launch.save(state_dir)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            list(launch.argv),
            env=env | launch.env,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = psutil.Process(child.pid).create_time()
    except psutil.Error:
        started = 0.0  # already gone: alive() says so, and the wait shows its log
    proc = Process(launch.name, launch.kind, child.pid, started, launch.url, str(log))
    cluster = cluster.with_process(proc)
    cluster.save()
    return cluster, proc


def restart(state_dir: Path, name: str, timeout: float) -> Process:
    """Start a stopped process of the local cluster again as `up` started it, and wait until it
    is ready: how `printctl failover-test` heals what it stopped. Raises StartFailed."""
    try:
        cluster = LocalCluster.load(state_dir)
    except ClusterFileError as exc:
        raise StartFailed(str(exc)) from None
    if cluster is None:
        raise StartFailed(f"no local cluster in {state_dir}")
    old = cluster.process(name)
    if old.alive():
        raise StartFailed(f"{name} is still running (pid {old.pid})")
    cluster, proc = spawn(cluster, Launch.load(state_dir, name))
    wait_ready(state_dir, (proc,), timeout)
    return proc


# -------------------------------------------------------------------------------------------- up


def up(
    config: ConfigOpt = None,
    instances: Annotated[
        int | None,
        typer.Option(
            "--instances", "-n", help="printd instances (default 3, or the cluster file's).", min=1, max=16
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", help="nginx's loopback port (default 8080 or the cluster file's; 0 = any free one)."
        ),
    ] = None,
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for every instance.")
    ] = 30.0,
    private_redis: Annotated[
        bool,
        typer.Option(
            "--private-redis",
            help="Run a redis-server of the cluster's own (loopback, no persistence) as REDIS_URL, "
            "for failover-test to stop.",
        ),
    ] = False,
    db_proxy: Annotated[
        bool,
        typer.Option(
            "--db-proxy",
            help="Put a TCP proxy of the cluster's own between the instances and PostgreSQL, "
            "for failover-test to cut.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Start N printd instances and nginx in front of them on loopback; return once all are healthy.

    Instances share DATABASE_URL (required for more than one: one PostgreSQL database) and REDIS_URL
    (default redis://127.0.0.1:6379/0, keys under a prefix of their own); the environment wins over
    the cluster file, and --private-redis over both. Tokens: printctl token --data-dir STATE_DIR ...

    Example: DATABASE_URL=postgresql://postgres@127.0.0.1/test printctl cluster up --instances 3
    Example: printctl cluster up --instances 3 --private-redis --db-proxy   # for printctl failover-test

    On a cluster that is partly up (an instance drained, killed or crashed), `up` starts the
    processes that are not running again, as they were started; then `cluster rebalance`.
    """
    try:
        spec = local_spec(config, instances, port)
    except ClusterFileError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        existing = LocalCluster.load(state_dir)
    except ClusterFileError as exc:
        fail(str(exc), EXIT_USAGE)
    if existing is not None:
        dead = [p for p in existing.processes if not p.alive()]
        if not dead:
            _report(existing, json_out, already=True)
            return
        if len(dead) < len(existing.processes):
            # partly up (an instance drained or killed): start what is missing, as it was started
            try:
                for proc in dead:
                    restart(state_dir, proc.name, timeout)
            except StartFailed as exc:
                fail(exc.message, EXIT_CHECK_FAILED)
            started = LocalCluster.load(state_dir)
            assert started is not None
            _report(started, json_out, already=True, restarted=[p.name for p in dead])
            return
        existing.forget()  # all gone: a stale record of a cluster that died

    database_url = os.environ.get("DATABASE_URL") or spec.database_url
    if len(spec.instances) > 1 and not (database_url or "").startswith(("postgresql:", "postgres:")):
        fail(
            f"{len(spec.instances)} instances need one shared PostgreSQL database: set "
            "DATABASE_URL=postgresql://user@host/db (each on its own SQLite would not see the others' jobs)",
            EXIT_USAGE,
        )
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        fail("nginx is not installed (apt-get install nginx-light)", EXIT_USAGE)
    redis_server = None
    if private_redis:
        redis_server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
        if redis_server is None:
            fail("--private-redis: redis-server is not installed (apt-get install redis-server)", EXIT_USAGE)
    if db_proxy:
        try:
            proxied_database(database_url or "")
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    for who, host, p in [(i.id, i.host, i.port) for i in spec.instances] + [
        ("nginx", spec.nginx.host or "127.0.0.1", spec.nginx.port)
    ]:
        if port_in_use(host, p):
            fail(
                f"{host}:{p} ({who}) is already in use; pick other ports (--port, --config)",
                EXIT_USAGE,
            )

    try:
        cluster = _start(spec, state_dir, database_url, nginx, redis_server, db_proxy, timeout, json_out)
    except StartFailed as exc:
        fail(exc.message, EXIT_CHECK_FAILED)
    _report(cluster, json_out, already=False)


def _start(
    spec: ClusterSpec,
    state_dir: Path,
    database_url: str | None,
    nginx: str,
    redis_server: str | None,
    db_proxy: bool,
    timeout: float,
    json_out: bool,
) -> LocalCluster:
    state_dir = state_dir.resolve()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    secret = os.environ.get("JWT_SECRET") or _secret(state_dir)
    config_path = state_dir / "printd.toml"
    config_path.write_text(tomli_w.dumps(dict(spec.settings)))
    redis_url = os.environ.get("REDIS_URL") or spec.redis_url or DEFAULT_REDIS_URL
    cluster = LocalCluster(state_dir, spec.nginx.front_url, f"{spec.prefix}-{secrets.token_hex(4)}")
    printd = default_printd()

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=json_out,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task(f"starting {len(spec.instances)} printd", total=len(spec.instances) + 1)

            def step() -> None:
                progress.advance(task)

            dependencies = []
            if db_proxy and database_url:
                launch, database_url = _db_proxy_launch(state_dir, database_url)
                cluster, proc = spawn(cluster, launch)
                dependencies.append(proc)
            if redis_server is not None:
                launch = _redis_launch(state_dir, redis_server)
                redis_url = launch.url
                cluster, proc = spawn(cluster, launch)
                dependencies.append(proc)
            if dependencies:
                progress.update(task, description="starting " + " and ".join(p.name for p in dependencies))
                wait_ready(state_dir, tuple(dependencies), timeout)
                progress.update(task, description=f"starting {len(spec.instances)} printd")
            for inst in spec.instances:
                data = state_dir / inst.id
                data.mkdir(exist_ok=True)
                env = instance_environment(
                    spec,
                    inst,
                    data_dir=str(data),
                    config_path=str(config_path),
                    database_url=database_url,
                    redis_url=redis_url,
                    redis_prefix=cluster.redis_prefix,
                )
                env |= {"JWT_SECRET": secret, "PYTHONUNBUFFERED": "1"}
                cluster, _ = spawn(
                    cluster, Launch(inst.id, "printd", (printd, "run"), env, str(data), inst.url)
                )
            instances = tuple(p for p in cluster.processes if p.kind == "printd")
            wait_ready(state_dir, instances, timeout, step)
            prefix = state_dir / "nginx"
            site = render_site(spec, source="printctl cluster up", access_log=str(prefix / "access.log"))
            conf = write_nginx_prefix(prefix, site)
            argv = (nginx, "-p", str(prefix), "-c", str(conf))
            cluster, front = spawn(
                cluster, Launch("nginx", "nginx", argv, {}, str(prefix), cluster.front_url)
            )
            progress.update(task, description="starting nginx")
            wait_ready(state_dir, (front,), timeout, step)
    except StartFailed:
        _stop_all(cluster.processes, timeout=10)
        cluster.forget()
        raise
    return cluster


def _db_proxy_launch(state_dir: Path, database_url: str) -> tuple[Launch, str]:
    """The database proxy on a free loopback port, and the DATABASE_URL that goes through it."""
    port = free_port()
    work = state_dir / "db-proxy"
    work.mkdir(exist_ok=True)
    host, upstream = proxied_database(database_url)
    argv = [sys.executable, "-m", "printctl.faults.proxy", "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", f"[{host}]:{upstream}" if ":" in host else f"{host}:{upstream}"]
    argv += ["--state-file", str(proxy_state_file(state_dir, "db-proxy"))]
    launch = Launch("db-proxy", "db-proxy", tuple(argv), {}, str(work), f"tcp://127.0.0.1:{port}")
    return launch, via_proxy(database_url, port)


def _redis_launch(state_dir: Path, redis_server: str) -> Launch:
    """A redis-server on a free loopback port without persistence: restarted, it is empty."""
    port = free_port()
    work = state_dir / "redis"
    work.mkdir(exist_ok=True)
    argv = (redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
    return Launch("redis", "redis", (*argv, "--dir", str(work)), {}, str(work), f"redis://127.0.0.1:{port}/0")


def _secret(state_dir: Path) -> str:
    """One secret for every instance (as `printctl token --data-dir STATE_DIR` reads it)."""
    path = state_dir / "jwt_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value


def wait_ready(
    state_dir: Path, processes: tuple[Process, ...], timeout: float, advance: Callable[[], None] | None = None
) -> None:
    """Until each process answers (printd and nginx: health 200; redis: PING; the proxy: its
    state file says up). StartFailed when one exits or the timeout passes."""
    pending = list(processes)
    deadline = time.monotonic() + timeout
    while pending:
        for proc in list(pending):
            if not proc.alive():
                raise StartFailed(
                    f"{proc.name} exited at start; the end of {proc.log}:\n{_log_tail(proc.log)}"
                )
            if ready(state_dir, proc):
                pending.remove(proc)
                if advance is not None:
                    advance()
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            raise StartFailed(f"{names} not healthy after {timeout:g} s; see {pending[0].log}")
        if pending:
            time.sleep(0.1)


def _report(
    cluster: LocalCluster, json_out: bool, *, already: bool, restarted: list[str] | None = None
) -> None:
    if json_out:
        emit_json(
            {
                "ok": True,
                "already_up": already,
                "restarted": restarted or [],
                "front_url": cluster.front_url,
                "state_dir": str(cluster.state_dir),
                "redis_prefix": cluster.redis_prefix,
                "processes": [asdict(p) for p in cluster.processes],
            }
        )
        return
    console.print(_process_table(cluster, rows=None))
    if restarted:
        console.print(f"[green]started again[/green]: {', '.join(restarted)}", highlight=False)
    if already:
        console.print(f"[yellow]already up[/yellow]: {cluster.front_url}", highlight=False)
    else:
        console.print(f"[green]up[/green]: {cluster.front_url}", highlight=False)
    console.print(
        f"  export PRINTD_URL={cluster.front_url}\n"
        f"  printctl token --data-dir {cluster.state_dir} --role agent --company acme --branch b1 "
        "--sub agent-1\n"
        "  printctl cluster ls; printctl cluster down",
        highlight=False,
        soft_wrap=True,
    )


# ------------------------------------------------------------------------------------ down and ls


def down(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.0, help="Seconds to let printd drain before SIGKILL.")
    ] = 20.0,
    json_out: JsonOpt = False,
) -> None:
    """Stop every process of the local cluster (printd drains on SIGTERM; SIGKILL after --timeout).
    Logs and data stay in the state directory.

    Example: printctl cluster down --state-dir var/cluster
    """
    try:
        cluster = LocalCluster.load(state_dir)
    except ClusterFileError as exc:
        fail(str(exc), EXIT_USAGE)
    if cluster is None:
        if json_out:
            emit_json({"ok": True, "stopped": {}, "message": f"no local cluster in {state_dir}"})
        else:
            console.print(f"no local cluster in {state_dir}: nothing to stop", highlight=False)
        return
    result = _stop_all(cluster.processes, timeout)
    left = [name for name, outcome in result.items() if outcome == "still running"]
    if not left:
        cluster.forget()
    if json_out:
        emit_json({"ok": not left, "stopped": result, "state_dir": str(state_dir)})
    else:
        table = Table(title=f"cluster down ({state_dir})")
        table.add_column("process")
        table.add_column("pid", justify="right")
        table.add_column("result")
        for proc in cluster.processes:
            outcome = result[proc.name]
            colour = "red" if outcome == "still running" else "green"
            table.add_row(proc.name, str(proc.pid), f"[{colour}]{outcome}[/{colour}]")
        console.print(table)
    if left:
        raise typer.Exit(EXIT_CHECK_FAILED)


def ls(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to wait for each health answer.")
    ] = 3.0,
    json_out: JsonOpt = False,
) -> None:
    """The local cluster's processes: pid, running or not, health, connections, log. Exit 0 when
    every process runs and answers healthy, 1 otherwise (or when there is no cluster).

    Example: printctl cluster ls --json | jq '.processes[] | {name, status}'
    """
    try:
        cluster = LocalCluster.load(state_dir)
    except ClusterFileError as exc:
        fail(str(exc), EXIT_USAGE)
    if cluster is None:
        fail(f"no local cluster in {state_dir} (start one with `printctl cluster up`)")
    rows = []
    for proc in cluster.processes:
        running = proc.alive()
        if not running:
            health: dict[str, Any] = {"status": "exited"}
        elif proc.kind in DEPENDENCIES:
            health = {"status": dependency_status(cluster.state_dir, proc)}
        else:
            health = fetch_health(proc.url, timeout)
        rows.append({**asdict(proc), "running": running, "status": health.get("status"), "health": health})
    ok = bool(rows) and all(r["status"] == "ok" for r in rows)
    if json_out:
        emit_json({"ok": ok, "front_url": cluster.front_url, "processes": rows})
    else:
        console.print(_process_table(cluster, rows))
    raise typer.Exit(EXIT_OK if ok else EXIT_CHECK_FAILED)


def _process_table(cluster: LocalCluster, rows: list[dict[str, Any]] | None) -> Table:
    table = Table(title=f"local cluster: {cluster.front_url}  ({cluster.state_dir})")
    table.add_column("process")
    table.add_column("pid", justify="right")
    table.add_column("url")
    if rows is not None:
        table.add_column("status")
        table.add_column("connections", justify="right")
    table.add_column("log")
    for n, proc in enumerate(cluster.processes):
        cells = [proc.name, str(proc.pid), proc.url]
        if rows is not None:
            status = str(rows[n]["status"])
            colour = STATUS_COLOURS.get(status, "red")
            connections = rows[n]["health"].get("connections", "-") if proc.kind == "printd" else "-"
            cells += [f"[{colour}]{status}[/{colour}]", str(connections)]
        table.add_row(*cells, proc.log)
    return table


app.command("up")(up)
app.command("down")(down)
app.command("ls")(ls)


# ------------------------------------------------------------------------------- health --cluster


def member_rows(body: Any) -> list[dict[str, Any]]:
    """Rows from a GET /monitoring/cluster answer: `members` with an id, health status,
    connection count (a number or counts by role) and whether it leads."""
    members = body.get("members") if isinstance(body, dict) else None
    if not isinstance(members, list):
        raise ValueError("the answer has no `members` list")
    leader = body.get("leader")
    rows = []
    for m in members:
        if not isinstance(m, dict):
            continue
        ident = m.get("instance_id") or m.get("id") or m.get("instance") or "?"
        connections = m.get("connections")
        if isinstance(connections, dict):
            connections = sum(v for v in connections.values() if isinstance(v, int))
        rows.append(
            {
                "instance": ident,
                "url": m.get("url") or m.get("address") or "-",
                "status": m.get("status") or m.get("health") or "unknown",
                "connections": connections,
                "uptime": m.get("uptime"),
                "leader": bool(m.get("leader")) or ident == leader,
                "error": m.get("error"),
            }
        )
    return rows


def health_rows(targets: list[tuple[str, str]], timeout: float) -> list[dict[str, Any]]:
    """Each instance asked directly for /monitoring/health."""
    rows = []
    for ident, url in targets:
        body = fetch_health(url, timeout)
        rows.append(
            {
                "instance": ident,
                "url": url,
                "status": body.get("status", "unknown"),
                "connections": body.get("connections"),
                "uptime": body.get("uptime"),
                "circuits_open": body.get("circuits_open") or [],
                "leader": False,
                "error": body.get("error"),
            }
        )
    return rows


def all_healthy(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["status"] == "ok" for r in rows)


def cluster_table(rows: list[dict[str, Any]], source: str) -> Table:
    healthy = sum(r["status"] == "ok" for r in rows)
    colour = "green" if all_healthy(rows) else "red"
    table = Table(title=f"cluster health: [{colour}]{healthy}/{len(rows)} healthy[/{colour}]  ({source})")
    for column in ("instance", "url", "status", "connections", "uptime", "notes"):
        table.add_column(column, justify="right" if column in ("connections", "uptime") else "left")
    for r in rows:
        status = str(r["status"])
        notes = []
        if r.get("leader"):
            notes.append("leader")
        if r.get("circuits_open"):
            notes.append(f"[red]open: {', '.join(r['circuits_open'])}[/red]")
        if r.get("error"):
            notes.append(f"[red]{r['error']}[/red]")
        table.add_row(
            str(r["instance"]) + (" *" if r.get("leader") else ""),
            str(r["url"]),
            f"[{STATUS_COLOURS.get(status, 'red')}]{status}[/]",
            "-" if r.get("connections") is None else str(r["connections"]),
            _duration(r.get("uptime")),
            "; ".join(notes),
        )
    return table


def cluster_health(
    *,
    url: str,
    url_given: bool,
    config: Path | None,
    state_dir: Path | None,
    watch: float | None,
    timeout: float,
    json_out: bool,
    token: str | None = None,
) -> int:
    """`printctl health --cluster`: from the cluster file, the local cluster's state directory,
    or the front's GET /monitoring/cluster, in that order. Returns the exit code."""
    if watch is not None:
        fail(
            "--watch does not combine with --cluster (try: watch printctl health --cluster)",
            EXIT_USAGE,
        )
    if state_dir is None and config is None and not url_given and (DEFAULT_STATE_DIR / STATE_FILE).exists():
        state_dir = DEFAULT_STATE_DIR
    try:
        if config is not None:
            spec = load_cluster_file(config)
            source = f"cluster file {config}"
            rows = health_rows([(i.id, i.url) for i in spec.instances], timeout)
        elif state_dir is not None:
            cluster = LocalCluster.load(state_dir)
            if cluster is None:
                fail(f"no local cluster in {state_dir} (start one with `printctl cluster up`)")
            source = f"local cluster {state_dir}"
            rows = health_rows([(p.name, p.url) for p in cluster.processes if p.kind == "printd"], timeout)
        else:
            source = f"{url}/monitoring/cluster"
            rows = member_rows(get_json(url, "/monitoring/cluster", token=token, timeout=timeout))
    except ClusterFileError as exc:
        fail(str(exc), EXIT_USAGE)
    ok = all_healthy(rows)
    if json_out:
        emit_json(
            {"ok": ok, "source": source, "healthy": sum(r["status"] == "ok" for r in rows), "instances": rows}
        )
    else:
        console.print(cluster_table(rows, source))
    return EXIT_OK if ok else EXIT_CHECK_FAILED
