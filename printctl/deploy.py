"""`printctl deploy`: render a cluster description into systemd units, env files and the nginx
site; show what would change; install it with a rolling restart.

Three layers, so that the part that decides is testable without a host: `render` (spec -> file
contents), `plan_apply` (rendering + what is installed -> the ordered steps; pure), and
`execute` (runs the steps through a `Host`: the real one runs commands and asks /monitoring/health,
a test's records them).
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import math
import os
import pwd
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Protocol

import httpx
import tomli_w
import typer
from rich.syntax import Syntax
from rich.table import Table

from printctl.clusterspec import ClusterFileError, ClusterSpec, InstanceSpec, load_cluster_file
from printctl.common import EXIT_CHECK_FAILED, EXIT_USAGE, JsonOpt, console, emit_json, fail

TEMPLATES = Path(__file__).resolve().parent.parent / "config"
UNIT_TEMPLATE = TEMPLATES / "systemd" / "printd@.service"
SITE_TEMPLATE = TEMPLATES / "nginx" / "printd.conf"

ETC = PurePosixPath("/etc/printd")
UNIT_PATH = PurePosixPath("/etc/systemd/system/printd@.service")
SETTINGS_PATH = ETC / "printd.toml"
SECRETS_PATH = ETC / "secrets.env"
SITES_AVAILABLE = PurePosixPath("/etc/nginx/sites-available")
SITES_ENABLED = PurePosixPath("/etc/nginx/sites-enabled")
#: in the first line of every file deploy writes: how it recognises its own env files
RENDERED_MARK = "rendered by `printctl deploy`"

WATCHDOG_SEC = 30
LIMIT_NOFILE = 65536
#: beyond server.shutdown_grace: closing the store and the last writes
STOP_MARGIN_SEC = 25
UPSTREAM_MAX_FAILS = 3
UPSTREAM_FAIL_TIMEOUT = "10s"


# ------------------------------------------------------------------------------------ rendering


@dataclass(frozen=True, slots=True)
class RenderedFile:
    path: PurePosixPath  # where it is installed
    content: str
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Rendering:
    unit: RenderedFile
    settings: RenderedFile
    envs: Mapping[str, RenderedFile]  # by instance id
    site: RenderedFile

    @property
    def files(self) -> tuple[RenderedFile, ...]:
        return (self.site, self.unit, self.settings, *self.envs.values())

    @property
    def site_link(self) -> PurePosixPath:
        return SITES_ENABLED / self.site.path.name


def default_printd() -> str:
    """The printd installed next to this printctl (same venv), as an absolute path."""
    beside = Path(os.path.abspath(sys.executable)).parent / "printd"
    if beside.exists():
        return str(beside)
    found = shutil.which("printd")
    if found:
        return os.path.abspath(found)
    raise ClusterFileError(
        'cannot find the printd executable: set `printd = "/path/to/printd"` in the cluster file'
    )


def fill(template: str, values: Mapping[str, object]) -> str:
    """Replace every `@name@`; a placeholder without a value is a bug in the caller."""

    def whole_line(match: re.Match[str]) -> str:  # a block: an empty one leaves no blank line
        block = str(values[match.group(1)])
        return block if not block or block.endswith("\n") else block + "\n"

    def one(match: re.Match[str]) -> str:
        return str(values[match.group(1)])

    return re.sub(r"@([a-z_]+)@", one, re.sub(r"(?m)^@([a-z_]+)@\n", whole_line, template))


def instance_environment(
    spec: ClusterSpec,
    inst: InstanceSpec,
    *,
    data_dir: str,
    config_path: str,
    database_url: str | None,
    redis_url: str,
    redis_prefix: str,
) -> dict[str, str]:
    """What makes one printd an instance of the cluster: the same for a systemd env file and a
    local process."""
    env = {
        "INSTANCE_ID": inst.id,
        "HOST": inst.host,
        "PORT": str(inst.port),
        "PRINTD_MODE": spec.mode,
        "PRINTD_CONFIG": config_path,
        "PRINTD_DATA_DIR": data_dir,
    }
    if len(spec.instances) > 1 or (database_url or "").startswith(("postgresql:", "postgres:")):
        # one instance on its own SQLite is no cluster (printd refuses Redis without PostgreSQL)
        env |= {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    if database_url:
        env["DATABASE_URL"] = database_url
    if "trusted_proxies" not in spec.settings.get("server", {}):
        # nginx reaches the instances from loopback (same host) or from its own address: printd
        # believes X-Forwarded-For from there only, to log the real client
        proxies = ["127.0.0.1", "::1"]
        if spec.nginx.host and spec.nginx.host not in ("0.0.0.0", "::", *proxies):
            proxies.append(spec.nginx.host)
        env["TRUSTED_PROXIES"] = ",".join(proxies)
    return env


def websocket_timeout(spec: ClusterSpec) -> int:
    """nginx's read/send timeout on /printing-ws: twice printd's ping_timeout, so printd (which
    pings quiet clients every ping_interval) always notices a dead connection first."""
    return math.ceil(2 * spec.printd_config.server.ping_timeout)


def render_site(
    spec: ClusterSpec, *, source: str, access_log: str = "/var/log/nginx/printd-access.log"
) -> str:
    ident = spec.name.replace("-", "_")
    servers = "\n".join(
        f"    server {i.address} max_fails={UPSTREAM_MAX_FAILS} fail_timeout={UPSTREAM_FAIL_TIMEOUT};"
        for i in spec.instances
    )
    ng = spec.nginx
    listen = f"    listen {ng.listen}{' ssl' if ng.tls else ''};"
    tls = ""
    if ng.tls:
        tls = (
            f"    ssl_certificate {ng.tls_certificate};\n"
            f"    ssl_certificate_key {ng.tls_certificate_key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            f"    ssl_session_cache shared:{ident}_tls:10m;\n"
            "    ssl_session_timeout 1d;\n"
        )
    allow = "\n".join(f"        allow {a};" for a in ng.monitoring_allow)
    server = spec.printd_config.server
    return fill(
        SITE_TEMPLATE.read_text(),
        {
            "name": spec.name,
            "source": source,
            "ident": ident,
            "servers": servers,
            "listen": listen,
            "server_name": ng.server_name,
            "tls": tls,
            "max_body": server.max_http_body_bytes,
            "tries": len(spec.instances),
            "ping_timeout": f"{server.ping_timeout:g}",
            "ws_timeout": websocket_timeout(spec),
            "monitoring_allow": allow,
            "access_log": access_log,
        },
    )


def render(spec: ClusterSpec, *, source: str, printd_bin: str | None = None) -> Rendering:
    """Every file of the deployment, deterministic (no dates), so a diff shows only real changes."""
    grace = spec.printd_config.server.shutdown_grace
    unit = fill(
        UNIT_TEMPLATE.read_text(),
        {
            "name": spec.name,
            "source": source,
            "user": spec.user,
            "data_dir": spec.data_dir,
            "printd": printd_bin or spec.printd or default_printd(),
            "shutdown_grace": f"{grace:g}",
            "timeout_stop": math.ceil(grace) + STOP_MARGIN_SEC,
            "watchdog": WATCHDOG_SEC,
            "nofile": LIMIT_NOFILE,
        },
    )
    settings = (
        f'# Settings shared by every printd instance of cluster "{spec.name}": {RENDERED_MARK}'
        f" from {source}.\n"
        "# Per-instance values are in /etc/printd/<id>.env, secrets in /etc/printd/secrets.env.\n\n"
        + tomli_w.dumps(dict(spec.settings))
    )
    envs = {}
    for inst in spec.instances:
        env = instance_environment(
            spec,
            inst,
            data_dir=f"{spec.data_dir}/{inst.id}",
            config_path=str(SETTINGS_PATH),
            database_url=spec.database_url,
            redis_url=spec.redis_url,
            redis_prefix=spec.prefix,
        )
        text = (
            f'# printd instance {inst.id} of cluster "{spec.name}": {RENDERED_MARK} from {source}.\n'
            "# Secrets (JWT_SECRET, passwords) go in /etc/printd/secrets.env, read after this file.\n"
            + "".join(f"{k}={v}\n" for k, v in env.items())
        )
        envs[inst.id] = RenderedFile(ETC / f"{inst.id}.env", text)
    return Rendering(
        unit=RenderedFile(UNIT_PATH, unit),
        settings=RenderedFile(SETTINGS_PATH, settings),
        envs=envs,
        site=RenderedFile(SITES_AVAILABLE / spec.name, render_site(spec, source=source)),
    )


def write_nginx_prefix(prefix: Path, site: str) -> Path:
    """A whole nginx.conf around one site, every path under `prefix` (returned: the conf to pass
    with `-p PREFIX -c CONF`): how the local cluster runs nginx and how the tests check the site,
    never touching the system's nginx."""
    temp = prefix / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    temps = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # every proxied WebSocket holds two connections of a worker (client and upstream): size the
    # workers to the fd limit, not nginx's default 1024 (about 500 agents)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    connections = max(1024, min(nofile // 2, 65536) if nofile != resource.RLIM_INFINITY else 65536)
    conf = prefix / "nginx.conf"
    conf.write_text(
        "worker_processes auto;\n"
        f"worker_rlimit_nofile {connections * 2};\n"
        "daemon off;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'nginx-error.log'} notice;\n"
        f"events {{ worker_connections {connections}; }}\n"
        "http {\n"
        f"    access_log {prefix / 'nginx-access.log'};\n"
        f"{temps}\n"
        f"    include {prefix / 'site.conf'};\n"
        "}\n"
    )
    return conf


# ------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class WriteFile:
    path: PurePosixPath
    content: str
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path}"


@dataclass(frozen=True, slots=True)
class RemoveFile:
    path: PurePosixPath

    def describe(self) -> str:
        return f"remove {self.path}"


@dataclass(frozen=True, slots=True)
class Symlink:
    path: PurePosixPath
    target: PurePosixPath

    def describe(self) -> str:
        return f"link {self.path} -> {self.target}"


@dataclass(frozen=True, slots=True)
class Run:
    argv: tuple[str, ...]
    why: str
    #: on failure, these put back what the previous steps changed (then the apply stops)
    rollback: tuple[WriteFile | RemoveFile, ...] = ()

    def describe(self) -> str:
        return f"{' '.join(self.argv)}  ({self.why})"


@dataclass(frozen=True, slots=True)
class WaitHealthy:
    instance: str
    url: str

    def describe(self) -> str:
        return f"wait until {self.instance} answers healthy at {self.url}/monitoring/health"


@dataclass(frozen=True, slots=True)
class RequireOtherHealthy:
    """Before an instance goes down: at least one other is healthy, so never zero are."""

    instance: str
    others: tuple[tuple[str, str], ...]  # (id, url)

    def describe(self) -> str:
        names = ", ".join(i for i, _ in self.others)
        return f"check that another instance is healthy before restarting {self.instance} ({names})"


Step = WriteFile | RemoveFile | Symlink | Run | WaitHealthy | RequireOtherHealthy


class Restart(enum.StrEnum):
    changed = "changed"
    all = "all"
    none = "none"


@dataclass(frozen=True, slots=True)
class HostState:
    """What is installed, as far as the plan needs it."""

    files: Mapping[PurePosixPath, str | None]  # current content of each rendered path (None: absent)
    installed_instances: frozenset[str]  # ids with an env file that deploy wrote
    user_exists: bool
    site_enabled: bool
    secrets_ready: bool  # secrets.env exists with a JWT_SECRET line


def preflight(spec: ClusterSpec, host: HostState) -> list[str]:
    """Why --apply would refuse to start (nothing is changed then)."""
    problems = []
    if not host.secrets_ready:
        problems.append(
            f"{SECRETS_PATH} is missing or has no JWT_SECRET line: every instance must share one "
            f"secret. Create it: install -m 0600 /dev/null {SECRETS_PATH} && "
            f'echo "JWT_SECRET=$(openssl rand -hex 32)" >> {SECRETS_PATH}'
        )
    return problems


def changed_paths(rendering: Rendering, host: HostState) -> list[PurePosixPath]:
    return [f.path for f in rendering.files if host.files.get(f.path) != f.content]


def plan_apply(spec: ClusterSpec, rendering: Rendering, host: HostState, restart: Restart) -> list[Step]:
    """The ordered steps of --apply. Nothing that runs is restarted before the new nginx site
    passed `nginx -t`; new instances start before nginx routes to them; existing ones restart
    one at a time, each only while another is healthy, and each waited for until healthy."""
    changed = set(changed_paths(rendering, host))
    steps: list[Step] = []

    site = rendering.site
    site_changed = site.path in changed or not host.site_enabled
    if site_changed:
        steps.append(WriteFile(site.path, site.content))
        undo: list[WriteFile | RemoveFile] = []
        if not host.site_enabled:
            steps.append(Symlink(rendering.site_link, site.path))
            undo.append(RemoveFile(rendering.site_link))
        old = host.files.get(site.path)
        undo.append(WriteFile(site.path, old) if old is not None else RemoveFile(site.path))
        steps.append(Run(("nginx", "-t"), "check the whole nginx configuration", tuple(undo)))

    if not host.user_exists:
        steps.append(
            Run(
                ("useradd", "--system", "--user-group", "--home-dir", spec.data_dir, "--no-create-home")
                + ("--shell", "/usr/sbin/nologin", spec.user),
                "the service user",
            )
        )
    new = [i for i in spec.instances if i.id not in host.installed_instances]
    for inst in new:
        directory = f"{spec.data_dir}/{inst.id}"
        steps.append(
            Run(
                ("install", "-d", "-o", spec.user, "-g", spec.user, "-m", "0750", directory),
                f"{inst.id}'s data directory",
            )
        )
    for f in (rendering.unit, rendering.settings, *rendering.envs.values()):
        if f.path in changed:
            steps.append(WriteFile(f.path, f.content, f.mode))
    if rendering.unit.path in changed:
        steps.append(Run(("systemctl", "daemon-reload"), "load the changed unit"))

    for inst in new:
        steps.append(Run(("systemctl", "enable", "--now", inst.unit), f"start the new instance {inst.id}"))
        steps.append(WaitHealthy(inst.id, inst.url))
    if site_changed:
        steps.append(Run(("systemctl", "reload", "nginx"), "route to the new upstream list"))

    shared_changed = bool({rendering.unit.path, rendering.settings.path} & changed)
    for inst in spec.instances:
        if inst in new or restart is Restart.none:
            continue
        if restart is Restart.changed and not (shared_changed or rendering.envs[inst.id].path in changed):
            continue
        others = tuple((o.id, o.url) for o in spec.instances if o.id != inst.id)
        if others:
            steps.append(RequireOtherHealthy(inst.id, others))
        steps.append(
            Run(
                ("systemctl", "restart", inst.unit),
                f"SIGTERM drains {inst.id}: its agents reconnect through nginx to the others",
            )
        )
        steps.append(WaitHealthy(inst.id, inst.url))

    for gone in sorted(host.installed_instances - {i.id for i in spec.instances}):
        steps.append(
            Run(("systemctl", "disable", "--now", f"printd@{gone}.service"), f"{gone} left the cluster")
        )
        steps.append(RemoveFile(ETC / f"{gone}.env"))
    return steps


def unified_diff(rendering: Rendering, host: HostState) -> str:
    out: list[str] = []
    for f in rendering.files:
        old = host.files.get(f.path)
        if old == f.content:
            continue
        out.extend(
            difflib.unified_diff(
                (old or "").splitlines(keepends=True),
                f.content.splitlines(keepends=True),
                fromfile=str(f.path) if old is not None else "/dev/null",
                tofile=str(f.path),
            )
        )
    return "".join(out)


# ---------------------------------------------------------------------------------- the executor


class Host(Protocol):
    """What the executor needs from the machine beyond files: commands and instance health."""

    def run(self, argv: Sequence[str]) -> tuple[int, str]: ...

    def user_exists(self, name: str) -> bool: ...

    def health(self, url: str) -> str: ...

    def sleep(self, seconds: float) -> None: ...

    def monotonic(self) -> float: ...


class SystemHost:
    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        return done.returncode, (done.stdout + done.stderr).strip()

    def user_exists(self, name: str) -> bool:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def health(self, url: str) -> str:
        try:
            body = httpx.get(url + "/monitoring/health", timeout=3).json()
        except (httpx.HTTPError, ValueError):
            return "unreachable"
        return str(body.get("status", "unknown")) if isinstance(body, dict) else "unknown"

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


class StepFailed(Exception):
    def __init__(self, step: Step, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


def read_host_state(spec: ClusterSpec, rendering: Rendering, root: Path, host: Host) -> HostState:
    def under(path: PurePosixPath) -> Path:
        return root / path.relative_to("/")

    files: dict[PurePosixPath, str | None] = {}
    for f in rendering.files:
        try:
            files[f.path] = under(f.path).read_text()
        except FileNotFoundError:
            files[f.path] = None
    installed = set()
    for env in sorted(under(ETC).glob("*.env")) if under(ETC).is_dir() else []:
        try:
            first = env.read_text().partition("\n")[0]
        except OSError:
            continue
        if RENDERED_MARK in first:
            installed.add(env.stem)
    try:
        secrets = under(SECRETS_PATH).read_text()
    except OSError:
        secrets = ""
    return HostState(
        files=files,
        installed_instances=frozenset(installed),
        user_exists=host.user_exists(spec.user),
        site_enabled=os.path.lexists(under(rendering.site_link)),
        secrets_ready=any(line.startswith("JWT_SECRET=") and len(line) > 11 for line in secrets.splitlines()),
    )


def execute(
    steps: Sequence[Step],
    host: Host,
    root: Path,
    *,
    health_timeout: float,
    on_step: Callable[[Step], None] = lambda step: None,
) -> None:
    """Run the steps in order; the first that fails (after its rollback) raises StepFailed."""
    for step in steps:
        _execute_one(step, host, root, health_timeout)
        on_step(step)


def _execute_one(step: Step, host: Host, root: Path, health_timeout: float) -> None:
    def under(path: PurePosixPath) -> Path:
        return root / path.relative_to("/")

    match step:
        case WriteFile(path=path, content=content, mode=mode):
            target = under(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.printctl-tmp")
            tmp.write_text(content)
            tmp.chmod(mode)
            os.replace(tmp, target)
        case RemoveFile(path=path):
            under(path).unlink(missing_ok=True)
        case Symlink(path=path, target=link_target):
            link = under(path)
            link.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(link):
                link.unlink()
            link.symlink_to(str(link_target))
        case Run(argv=argv, rollback=rollback):
            code, output = host.run(argv)
            if code != 0:
                for undo in rollback:
                    _execute_one(undo, host, root, health_timeout)
                undone = " (rolled back)" if rollback else ""
                raise StepFailed(step, f"`{' '.join(argv)}` exited {code}{undone}: {output[-2000:]}")
        case WaitHealthy(instance=instance, url=url):
            deadline = host.monotonic() + health_timeout
            while (status := host.health(url)) != "ok":
                if host.monotonic() >= deadline:
                    raise StepFailed(
                        step,
                        f"{instance} is not healthy after {health_timeout:g} s (last: {status}); "
                        f"see journalctl -u printd@{instance} -n 50",
                    )
                host.sleep(0.5)
        case RequireOtherHealthy(instance=instance, others=others):
            if not any(host.health(url) == "ok" for _, url in others):
                raise StepFailed(
                    step,
                    f"not restarting {instance}: no other instance is healthy, so it would leave none; "
                    "see printctl health --cluster",
                )


# --------------------------------------------------------------------------------------- the CLI


def deploy(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The cluster description (see config/cluster.toml).")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the rendered files under DIR (paths as installed)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show a unified diff against what is installed, and the plan.")
    ] = False,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Install, check with nginx -t, reload, rolling restart (as root)."),
    ] = False,
    restart: Annotated[
        Restart,
        typer.Option(
            "--restart",
            help="Which running instances --apply restarts: those whose files changed, all (after "
            "upgrading printd), or none.",
        ),
    ] = Restart.changed,
    health_timeout: Annotated[
        float, typer.Option("--health-timeout", help="Seconds an instance has to be healthy again.", min=1)
    ] = 60.0,
    root: Annotated[Path, typer.Option("--root", hidden=True, help="Install under DIR instead of /.")] = Path(
        "/"
    ),
    json_out: JsonOpt = False,
) -> None:
    """Render the deployment of a cluster: systemd unit, one env file per instance, the shared
    printd.toml, the nginx site. --dry-run diffs it against the host, --apply installs it.

    Example: printctl deploy --config config/cluster.toml --output build/deploy
    Example: sudo printctl deploy --config /etc/printd/cluster.toml --dry-run
    """
    if dry_run and apply:
        fail("--dry-run and --apply exclude each other", EXIT_USAGE)
    if not (output or dry_run or apply):
        fail("say what to do: --output DIR, --dry-run or --apply", EXIT_USAGE)
    try:
        spec = load_cluster_file(config)
        rendering = render(spec, source=str(config))
    except ClusterFileError as exc:
        fail(str(exc), EXIT_USAGE)
    result: dict[str, Any] = {"ok": True}
    if output is not None:
        result["output"] = _write_output(rendering, output, json_out)
    if dry_run or apply:
        host: Host = ctx.obj if ctx.obj is not None else SystemHost()
        state = read_host_state(spec, rendering, root, host)
        plan = plan_apply(spec, rendering, state, restart)
        problems = preflight(spec, state)
        if dry_run:
            result.update(_show_dry_run(rendering, state, plan, problems, json_out))
        else:
            if problems:
                fail("; ".join(problems), EXIT_USAGE, problems=problems)
            result["steps"] = _apply(plan, host, root, health_timeout, json_out)
    if json_out:
        emit_json(result)


def _write_output(rendering: Rendering, output: Path, json_out: bool) -> list[str]:
    written = []
    try:
        for f in rendering.files:
            target = output / f.path.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            target.chmod(f.mode)
            written.append(str(target))
    except OSError as exc:
        fail(f"cannot write under {output}: {exc.strerror}", EXIT_USAGE)
    if not json_out:
        table = Table(title=f"rendered into {output}")
        table.add_column("file")
        table.add_column("installs to")
        for f, path in zip(rendering.files, written, strict=True):
            table.add_row(path, str(f.path))
        console.print(table)
    return written


def _show_dry_run(
    rendering: Rendering, state: HostState, plan: list[Step], problems: list[str], json_out: bool
) -> dict[str, Any]:
    diff = unified_diff(rendering, state)
    changed = [str(p) for p in changed_paths(rendering, state)]
    if not json_out:
        if diff:
            console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
        else:
            console.print("[green]every rendered file is installed as it is[/green]")
        table = Table(title="--apply would run")
        table.add_column("#", justify="right")
        table.add_column("step")
        for n, step in enumerate(plan, 1):
            table.add_row(str(n), step.describe())
        console.print(table)
        for problem in problems:
            console.print(f"[red]--apply would refuse:[/red] {problem}", highlight=False)
    return {"changed": changed, "diff": diff, "plan": [s.describe() for s in plan], "problems": problems}


def _apply(plan: list[Step], host: Host, root: Path, health_timeout: float, json_out: bool) -> list[str]:
    done: list[str] = []

    def on_step(step: Step) -> None:
        done.append(step.describe())
        if not json_out:
            console.print(f"[green]✓[/green] {step.describe()}", highlight=False)

    try:
        with console.status("applying", spinner="dots") if not json_out else contextlib.nullcontext():
            execute(plan, host, root, health_timeout=health_timeout, on_step=on_step)
    except StepFailed as exc:
        fail(exc.message, EXIT_CHECK_FAILED, steps=done, failed_step=exc.step.describe())
    except OSError as exc:
        fail(f"cannot install: {exc}", EXIT_CHECK_FAILED, steps=done)
    if not json_out:
        console.print(f"[green]applied[/green]: {len(done)} steps" if done else "nothing to do")
    return done
