"""printctl deploy: the cluster file, what is rendered from it, the --apply plan (a pure function)
and the executor driven by a recording host (commands are recorded, files really written under a
temporary root)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from printctl.clusterspec import ClusterFileError, ClusterSpec, load_cluster_file, parse_cluster
from printctl.deploy import (
    RENDERED_MARK,
    HostState,
    Rendering,
    RequireOtherHealthy,
    Restart,
    Run,
    Step,
    WaitHealthy,
    plan_apply,
    render,
)
from printctl.main import app

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILE = ROOT / "config" / "cluster.toml"
PRINTD = "/opt/printd/.venv/bin/printd"


def spec_from(**changes: Any) -> ClusterSpec:
    raw: dict[str, Any] = {
        "name": "printd",
        "database": {"url": "postgresql://printd@db.internal:5432/printd"},
        "nginx": {"listen": "127.0.0.1:8080"},
        "instances": [{"id": f"printd-{n}", "port": 3010 + n} for n in (1, 2, 3)],
    }
    raw.update(changes)
    return parse_cluster(raw)


def installed(rendering: Rendering, *, user: bool = True, secrets: bool = True) -> HostState:
    """A host where exactly this rendering is installed."""
    return HostState(
        files={f.path: f.content for f in rendering.files},
        installed_instances=frozenset(rendering.envs),
        user_exists=user,
        site_enabled=True,
        secrets_ready=secrets,
    )


def fresh_host() -> HostState:
    return HostState(
        files={}, installed_instances=frozenset(), user_exists=False, site_enabled=False, secrets_ready=True
    )


def commands(steps: Sequence[Step]) -> list[str]:
    return [" ".join(s.argv) for s in steps if isinstance(s, Run)]


# ------------------------------------------------------------------------------- the cluster file


def test_the_shipped_cluster_file_describes_a_loopback_cluster() -> None:
    spec = load_cluster_file(CLUSTER_FILE)
    assert [i.id for i in spec.instances] == ["printd-1", "printd-2", "printd-3"]
    assert {i.host for i in spec.instances} == {"127.0.0.1"}
    assert spec.nginx.front_url == "http://127.0.0.1:8080"
    assert spec.mode == "production" and spec.printd_config.auth.cors_origins == ("http://127.0.0.1:8080",)
    assert spec.database_url and spec.database_url.startswith("postgresql://")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"database": {"url": "postgresql://printd:hunter2@db/printd"}}, "database.url: has a password"),
        ({"redis": {"url": "redis://:hunter2@127.0.0.1:6379/0"}}, "redis.url: has a password"),
        ({"database": {}}, "3 instances need one shared PostgreSQL database"),
        ({"database": {"url": "sqlite:///var/lib/printd/printd.db"}}, "need one shared PostgreSQL"),
        ({"instances": []}, "add at least one [[instances]]"),
        ({"instances": [{"id": "a", "port": 3011}, {"id": "a", "port": 3012}]}, "'a' is used twice"),
        ({"instances": [{"id": "a", "port": 80}]}, "instances[0].port: 80 is not a TCP port from 1024"),
        ({"instances": [{"id": "a b", "port": 3011}]}, "instances[0].id: 'a b' must be letters"),
        ({"instances": [{"id": "a", "port": 3011}, {"id": "b", "port": 3011}]}, "is also a's address"),
        ({"nginx": {"listen": "127.0.0.1:3011"}}, "port 3011 is also printd-1's port"),
        ({"nginx": {"tls_certificate": "/etc/ssl/a.pem"}}, "give both TLS paths"),
        ({"nginx": {"monitoring_allow": ["everyone"]}}, "'everyone' is not an address or CIDR range"),
        (
            {"settings": {"server": {"port": 3001}}},
            "settings.server.port: not here; use each [[instances]] `port`",
        ),
        (
            {"settings": {"auth": {"jwt_secret": "x" * 40}}},
            "settings.auth.jwt_secret: not here; use JWT_SECRET",
        ),
        ({"settings": {"server": {"ping_timeout": 10.0}}}, "settings.server.ping_timeout: must be greater"),
        ({"settings": {"jobs": {"ack_timeout": "soon"}}}, "settings.jobs.ack_timeout: expected a number"),
        ({"replicas": 3}, "replicas: unknown key"),
        ({"mode": "staging"}, "mode: 'staging' is not"),
    ],
)
def test_a_wrong_cluster_file_is_refused_naming_the_key_and_the_fix(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClusterFileError) as err:
        spec_from(**changes)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------- rendering


def test_the_unit_runs_printd_hardened_with_a_watchdog_and_a_stop_timeout_beyond_the_drain() -> None:
    unit = render(spec_from(), source="cluster.toml", printd_bin=PRINTD).unit
    assert unit.path == PurePosixPath("/etc/systemd/system/printd@.service")
    lines = set(unit.content.splitlines())
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/printd/%i",
        "User=printd",
        "EnvironmentFile=/etc/printd/%i.env",
        "EnvironmentFile=/etc/printd/secrets.env",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"ExecStart={PRINTD} run",
        "TimeoutStopSec=30",
    ):
        assert line in lines, line
    # secrets.env is read after the instance file, so a DATABASE_URL with a password there wins
    assert unit.content.index("%i.env") < unit.content.index("secrets.env\n")


def test_the_stop_timeout_follows_shutdown_grace() -> None:
    spec = spec_from(settings={"server": {"shutdown_grace": 40.0}})
    stop = re.search(
        r"^TimeoutStopSec=(\d+)$", render(spec, source="c", printd_bin=PRINTD).unit.content, re.M
    )
    assert stop is not None and int(stop.group(1)) > 40


def test_each_instance_gets_an_env_file_without_secrets() -> None:
    rendering = render(spec_from(), source="cluster.toml", printd_bin=PRINTD)
    env = rendering.envs["printd-2"]
    assert env.path == PurePosixPath("/etc/printd/printd-2.env")
    assert RENDERED_MARK in env.content.splitlines()[0]
    values = dict(line.split("=", 1) for line in env.content.splitlines() if not line.startswith("#"))
    assert values == {
        "INSTANCE_ID": "printd-2",
        "HOST": "127.0.0.1",
        "PORT": "3012",
        "PRINTD_MODE": "production",
        "PRINTD_CONFIG": "/etc/printd/printd.toml",
        "PRINTD_DATA_DIR": "/var/lib/printd/printd-2",
        "DATABASE_URL": "postgresql://printd@db.internal:5432/printd",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "REDIS_PREFIX": "printd",
        "TRUSTED_PROXIES": "127.0.0.1,::1",  # nginx: its X-Forwarded-For names the real client
    }


def test_a_lone_instance_on_sqlite_gets_no_redis() -> None:
    """printd refuses a cluster without PostgreSQL; one instance on its own SQLite is no cluster."""
    spec = spec_from(database={}, instances=[{"id": "solo", "port": 3011}])
    env = render(spec, source="cluster.toml", printd_bin=PRINTD).envs["solo"].content
    assert "REDIS_URL" not in env and "DATABASE_URL" not in env


def test_the_site_balances_by_connection_count_and_retries_a_draining_instance() -> None:
    site = render(spec_from(), source="cluster.toml", printd_bin=PRINTD).site.content
    assert "least_conn;" in site and "ip_hash;" not in site
    assert site.count("max_fails=3 fail_timeout=10s;") == 3
    assert "server 127.0.0.1:3012 max_fails=3" in site
    ws = site[site.index("location = /printing-ws") :]
    ws = ws[: ws.index("}")]
    assert "proxy_next_upstream error timeout http_503;" in ws
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", ws).group(1))  # type: ignore[union-attr]
    assert read_timeout > 60  # printd's default ping_timeout
    assert "map $http_upgrade $printd_connection" in site
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in site  # set by nginx, never appended
    assert "location /api/" in site and "location /monitoring/" in site
    assert "allow 127.0.0.1;" in site and "deny all;" in site
    assert "ssl" not in site and "listen 127.0.0.1:8080;" in site


def test_the_websocket_timeout_follows_ping_timeout() -> None:
    spec = spec_from(settings={"server": {"ping_interval": 50.0, "ping_timeout": 150.0}})
    site = render(spec, source="c", printd_bin=PRINTD).site.content
    assert int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1)) > 150  # type: ignore[union-attr]


def test_tls_paths_from_the_cluster_file() -> None:
    spec = spec_from(
        nginx={"listen": "443", "tls_certificate": "/etc/ssl/p.pem", "tls_certificate_key": "/k.key"}
    )
    site = render(spec, source="c", printd_bin=PRINTD).site.content
    assert "listen 443 ssl;" in site
    assert "ssl_certificate /etc/ssl/p.pem;" in site and "ssl_certificate_key /k.key;" in site
    assert spec.nginx.front_url == "https://127.0.0.1:443"


def test_rendering_is_deterministic() -> None:
    a = render(spec_from(), source="c", printd_bin=PRINTD)
    b = render(spec_from(), source="c", printd_bin=PRINTD)
    assert a == b


# -------------------------------------------------------------------------------------- the plan


def test_a_fresh_host_gets_everything_in_an_order_that_never_breaks_what_runs() -> None:
    spec = spec_from()
    rendering = render(spec, source="c", printd_bin=PRINTD)
    steps = plan_apply(spec, rendering, fresh_host(), Restart.changed)
    described = [s.describe() for s in steps]
    assert described[:3] == [
        "write /etc/nginx/sites-available/printd",
        "link /etc/nginx/sites-enabled/printd -> /etc/nginx/sites-available/printd",
        "nginx -t  (check the whole nginx configuration)",
    ]
    assert commands(steps) == [
        "nginx -t",
        "useradd --system --user-group --home-dir /var/lib/printd --no-create-home "
        "--shell /usr/sbin/nologin printd",
        "install -d -o printd -g printd -m 0750 /var/lib/printd/printd-1",
        "install -d -o printd -g printd -m 0750 /var/lib/printd/printd-2",
        "install -d -o printd -g printd -m 0750 /var/lib/printd/printd-3",
        "systemctl daemon-reload",
        "systemctl enable --now printd@printd-1.service",
        "systemctl enable --now printd@printd-2.service",
        "systemctl enable --now printd@printd-3.service",
        "systemctl reload nginx",
    ]
    # each new instance is waited for before the next starts and before nginx routes to them
    starts = [n for n, s in enumerate(steps) if isinstance(s, Run) and "enable" in s.argv]
    assert all(isinstance(steps[n + 1], WaitHealthy) for n in starts)
    # a failed nginx -t takes the new site and its link back out
    check = next(s for s in steps if isinstance(s, Run) and s.argv == ("nginx", "-t"))
    assert [r.describe() for r in check.rollback] == [
        "remove /etc/nginx/sites-enabled/printd",
        "remove /etc/nginx/sites-available/printd",
    ]


def test_nothing_changed_nothing_to_do() -> None:
    spec = spec_from()
    rendering = render(spec, source="c", printd_bin=PRINTD)
    assert plan_apply(spec, rendering, installed(rendering), Restart.changed) == []


def test_a_changed_instance_file_restarts_only_that_instance_while_another_is_healthy() -> None:
    spec = spec_from()
    rendering = render(spec, source="c", printd_bin=PRINTD)
    host = installed(rendering)
    host = HostState(
        files={**host.files, rendering.envs["printd-2"].path: "PORT=3999\n"},
        installed_instances=host.installed_instances,
        user_exists=True,
        site_enabled=True,
        secrets_ready=True,
    )
    steps = plan_apply(spec, rendering, host, Restart.changed)
    assert [s.describe() for s in steps][:1] == ["write /etc/printd/printd-2.env"]
    assert commands(steps) == ["systemctl restart printd@printd-2.service"]
    guard = steps[1]
    assert isinstance(guard, RequireOtherHealthy) and guard.instance == "printd-2"
    assert [i for i, _ in guard.others] == ["printd-1", "printd-3"]
    assert isinstance(steps[-1], WaitHealthy) and steps[-1].instance == "printd-2"


def test_a_changed_unit_reloads_systemd_then_restarts_every_instance_one_at_a_time() -> None:
    spec = spec_from()
    rendering = render(spec, source="c", printd_bin=PRINTD)
    old = installed(rendering)
    host = HostState(
        {**old.files, rendering.unit.path: "old unit"}, old.installed_instances, True, True, True
    )
    steps = plan_apply(spec, rendering, host, Restart.changed)
    assert commands(steps) == [
        "systemctl daemon-reload",
        "systemctl restart printd@printd-1.service",
        "systemctl restart printd@printd-2.service",
        "systemctl restart printd@printd-3.service",
    ]
    kinds = [type(s).__name__ for s in steps[2:]]
    assert kinds == ["RequireOtherHealthy", "Run", "WaitHealthy"] * 3


def test_restart_all_after_an_upgrade_and_restart_none() -> None:
    spec = spec_from()
    rendering = render(spec, source="c", printd_bin=PRINTD)
    restarts = commands(plan_apply(spec, rendering, installed(rendering), Restart.all))
    assert restarts == [f"systemctl restart printd@printd-{n}.service" for n in (1, 2, 3)]
    old = installed(rendering)
    host = HostState(
        {**old.files, rendering.unit.path: "old unit"}, old.installed_instances, True, True, True
    )
    assert commands(plan_apply(spec, rendering, host, Restart.none)) == ["systemctl daemon-reload"]


def test_a_new_instance_starts_before_nginx_routes_to_it_and_a_removed_one_stops_last() -> None:
    before = spec_from(
        instances=[
            {"id": "printd-1", "port": 3011},
            {"id": "printd-2", "port": 3012},
            {"id": "old", "port": 3019},
        ]
    )
    host = installed(render(before, source="c", printd_bin=PRINTD))
    spec = spec_from(
        instances=[
            {"id": "printd-1", "port": 3011},
            {"id": "printd-2", "port": 3012},
            {"id": "new", "port": 3020},
        ]
    )
    steps = plan_apply(spec, render(spec, source="c", printd_bin=PRINTD), host, Restart.changed)
    assert commands(steps) == [
        "nginx -t",
        "install -d -o printd -g printd -m 0750 /var/lib/printd/new",
        "systemctl enable --now printd@new.service",
        "systemctl reload nginx",
        "systemctl disable --now printd@old.service",
    ]
    assert steps[-1].describe() == "remove /etc/printd/old.env"


def test_a_single_instance_restarts_without_the_other_healthy_check() -> None:
    spec = spec_from(instances=[{"id": "solo", "port": 3011}], database={})
    rendering = render(spec, source="c", printd_bin=PRINTD)
    steps = plan_apply(spec, rendering, installed(rendering), Restart.all)
    assert [type(s).__name__ for s in steps] == ["Run", "WaitHealthy"]


# ----------------------------------------------------------------------------- --apply, --dry-run


class RecordingHost:
    """Records every command; health answers from a script (per URL, the last answer repeats);
    time advances only when the executor sleeps."""

    def __init__(
        self, health: dict[str, list[str]] | None = None, fail: Sequence[str] = (), users: Sequence[str] = ()
    ) -> None:
        self.commands: list[str] = []
        self.users = set(users)
        self.health_script = health or {}
        self.fail = tuple(fail)
        self.clock = 0.0

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        line = " ".join(argv)
        self.commands.append(line)
        if line in self.fail:
            return 1, f"{line}: failed on purpose"
        return 0, ""

    def user_exists(self, name: str) -> bool:
        return name in self.users

    def health(self, url: str) -> str:
        script = self.health_script.get(url, ["ok"])
        return script.pop(0) if len(script) > 1 else script[0]

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def monotonic(self) -> float:
        return self.clock


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER_FILE.read_text().replace('# printd = "/opt', 'printd = "/opt'))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host root with the secrets file an operator writes once."""
    root = tmp_path / "root"
    (root / "etc/printd").mkdir(parents=True)
    (root / "etc/printd/secrets.env").write_text("JWT_SECRET=" + "s" * 64 + "\n")
    return root


def deploy(host: RecordingHost | None, *args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["deploy", *args], obj=host)


def test_apply_installs_then_checks_nginx_then_starts_each_instance(cluster_file: Path, root: Path) -> None:
    host = RecordingHost()
    result = deploy(host, "--config", str(cluster_file), "--apply", "--root", str(root), "--json")
    assert result.exit_code == 0, result.output
    assert host.commands[0] == "nginx -t"
    assert host.commands[-4:] == [
        "systemctl enable --now printd@printd-1.service",
        "systemctl enable --now printd@printd-2.service",
        "systemctl enable --now printd@printd-3.service",
        "systemctl reload nginx",
    ]
    unit = (root / "etc/systemd/system/printd@.service").read_text()
    assert "ExecStart=/opt/printd/.venv/bin/printd run" in unit
    assert "PORT=3012" in (root / "etc/printd/printd-2.env").read_text()
    assert os.readlink(root / "etc/nginx/sites-enabled/printd") == "/etc/nginx/sites-available/printd"
    assert json.loads(result.stdout)["ok"] is True

    again = RecordingHost(users=["printd"])
    result = deploy(again, "--config", str(cluster_file), "--apply", "--root", str(root))
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert again.commands == []


def test_a_failing_nginx_check_puts_the_old_site_back_and_touches_nothing_else(
    cluster_file: Path, root: Path
) -> None:
    host = RecordingHost(fail=["nginx -t"])
    result = deploy(host, "--config", str(cluster_file), "--apply", "--root", str(root), "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)
    assert "`nginx -t` exited 1 (rolled back)" in error["error"]
    assert host.commands == ["nginx -t"]
    assert not (root / "etc/nginx/sites-available/printd").exists()
    assert not os.path.lexists(root / "etc/nginx/sites-enabled/printd")
    assert not (root / "etc/systemd/system/printd@.service").exists()


def test_the_rolling_restart_stops_rather_than_leave_no_healthy_instance(
    cluster_file: Path, root: Path
) -> None:
    assert (
        deploy(RecordingHost(), "--config", str(cluster_file), "--apply", "--root", str(root)).exit_code == 0
    )
    down = {f"http://127.0.0.1:{port}": ["unreachable"] for port in (3012, 3013)}
    host = RecordingHost(health=down, users=["printd"])
    result = deploy(
        host, "--config", str(cluster_file), "--apply", "--restart", "all", "--root", str(root), "--json"
    )
    assert result.exit_code == 1
    assert "not restarting printd-1: no other instance is healthy" in json.loads(result.stdout)["error"]
    assert host.commands == []


def test_an_instance_that_does_not_come_back_stops_the_rollout(cluster_file: Path, root: Path) -> None:
    assert (
        deploy(RecordingHost(), "--config", str(cluster_file), "--apply", "--root", str(root)).exit_code == 0
    )
    host = RecordingHost(health={"http://127.0.0.1:3011": ["unreachable"]}, users=["printd"])
    result = deploy(
        host, "--config", str(cluster_file), "--apply", "--restart", "all", "--health-timeout", "5",
        "--root", str(root), "--json",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "printd-1 is not healthy after 5 s (last: unreachable)" in json.loads(result.stdout)["error"]
    assert host.commands == ["systemctl restart printd@printd-1.service"]  # printd-2 and -3 untouched
    assert host.clock >= 5


def test_apply_refuses_without_the_shared_secret(cluster_file: Path, root: Path) -> None:
    (root / "etc/printd/secrets.env").unlink()
    host = RecordingHost()
    result = deploy(host, "--config", str(cluster_file), "--apply", "--root", str(root), "--json")
    assert result.exit_code == 2
    assert "secrets.env is missing" in json.loads(result.stdout)["error"]
    assert host.commands == [] and not (root / "etc/systemd").exists()


def test_dry_run_shows_a_diff_and_the_plan_and_changes_nothing(cluster_file: Path, root: Path) -> None:
    assert (
        deploy(RecordingHost(), "--config", str(cluster_file), "--apply", "--root", str(root)).exit_code == 0
    )
    cluster_file.write_text(cluster_file.read_text().replace("port = 3012", "port = 3022"))
    result = deploy(None, "--config", str(cluster_file), "--dry-run", "--root", str(root), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["changed"] == ["/etc/nginx/sites-available/printd", "/etc/printd/printd-2.env"]
    assert "-PORT=3012\n+PORT=3022\n" in body["diff"]
    assert "-    server 127.0.0.1:3012" in body["diff"]
    assert "systemctl restart printd@printd-2.service" in " ".join(body["plan"])
    assert "PORT=3012" in (root / "etc/printd/printd-2.env").read_text()


def test_output_writes_the_files_as_they_install(cluster_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = deploy(None, "--config", str(cluster_file), "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert sorted(str(Path(p).relative_to(out)) for p in json.loads(result.stdout)["output"]) == [
        "etc/nginx/sites-available/printd",
        "etc/printd/printd-1.env",
        "etc/printd/printd-2.env",
        "etc/printd/printd-3.env",
        "etc/printd/printd.toml",
        "etc/systemd/system/printd@.service",
    ]
    assert 'cors_origins = [\n    "http://127.0.0.1:8080",\n]' in (out / "etc/printd/printd.toml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dry-run", "--apply"], "--dry-run and --apply exclude each other"),
        ([], "say what to do: --output DIR, --dry-run or --apply"),
    ],
)
def test_usage_errors_exit_2_with_one_json_object(cluster_file: Path, args: list[str], message: str) -> None:
    result = deploy(None, "--config", str(cluster_file), *args, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"ok": False, "error": message, "exit_code": 2}


def test_a_bad_cluster_file_exits_2_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.toml"
    bad.write_text('[[instances]]\nid = "a"\nport = "x"\n')
    result = deploy(None, "--config", str(bad), "--output", str(tmp_path / "o"), "--json")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # no traceback
    assert "instances[0].port: 'x' is not a TCP port" in json.loads(result.stdout)["error"]
    missing = deploy(None, "--config", str(tmp_path / "nope.toml"), "--dry-run")
    assert missing.exit_code == 2 and "file not found" in missing.output


def test_the_operations_doc_shows_what_deploy_renders() -> None:
    """docs/operations.md §7.2 quotes the rendered files; this keeps them true."""
    doc = (ROOT / "docs/operations.md").read_text()
    rendering = render(load_cluster_file(CLUSTER_FILE), source="/etc/printd/cluster.toml", printd_bin=PRINTD)
    expected = {
        "unit": rendering.unit.content,
        "env printd-1": rendering.envs["printd-1"].content,
        "settings": rendering.settings.content,
        "site": rendering.site.content,
    }
    quoted = dict(re.findall(r"<!-- rendered: ([^>]+) -->\n```\w+\n(.*?)```\n", doc, re.S))
    assert quoted == expected
