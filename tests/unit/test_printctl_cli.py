"""printctl operator commands: token, config, health, instance, circuits, jobs, printers.

Most tests need no server; the HTTP ones share one real `printd run` subprocess per module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import tomli_w
import typer
from typer.testing import CliRunner, Result

from printctl.config_cmd import COMMENTS, render_default_config
from printctl.main import app
from printd.breakers import BreakerConfig
from printd.config import SECTIONS, Config, load_config

ROOT = Path(__file__).resolve().parents[2]
SECRET = "printctl-test-secret-0123456789abcdef0123"
#: Variables that would make a test depend on the machine it runs on.
CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "JWT_SECRET",
        "PRINTD_CONFIG",
        "PRINTD_DATA_DIR",
        "PRINTD_MODE",
        "PRINTD_URL",
        "PRINTD_TOKEN",
        "PORT",
        "HOST",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_HOST",
        "CORS_ORIGINS",
        "INSTANCE_ID",
        "STATUS_BATCH_DELAY",
        "PRINTD_LOG_LEVEL",
        "PRINTD_LOG_FORMAT",
    )
}


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    runner = CliRunner(env={**CLEAN_ENV, "COLUMNS": "200", **(env or {})})
    return runner.invoke(app, list(args))


# ------------------------------------------------------------------ token


def test_token_round_trip_prints_only_the_token() -> None:
    res = run(
        "token",
        "--role",
        "agent",
        "--company",
        "acme",
        "--branch",
        "b1",
        "--sub",
        "agent-1",
        "--ttl",
        "2h",
        env={"JWT_SECRET": SECRET},
    )
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    assert res.stdout.endswith("\n") and res.stdout.count("\n") == 1
    value = res.stdout.strip()
    claims = jwt.decode(value, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "agent-1"
    assert claims["role"] == "agent"
    assert claims["company"] == "acme"
    assert claims["branch"] == "b1"
    assert claims["exp"] - claims["iat"] == 7200


def test_token_json_has_decoded_claims_and_no_secret() -> None:
    res = run(
        "token", "--role", "admin", "--company", "*", "--sub", "ops", "--json", env={"JWT_SECRET": SECRET}
    )
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert set(body) >= {"token", "claims"}
    assert body["claims"] == jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert body["claims"]["role"] == "admin" and body["claims"]["company"] == "*"
    assert SECRET not in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "root", "--company", "acme", "--sub", "x"], "unknown role"),
        (["--role", "agent", "--company", "acme", "--sub", "x"], "needs --branch"),
        (["--role", "service", "--company", "acme", "--sub", "x", "--ttl", "0"], "bad TTL"),
        (["--role", "service", "--company", "acme", "--sub", "x", "--ttl", "1y"], "bad TTL"),
        (["--role", "service", "--company", "acme", "--sub", "a b"], "bad sub"),
        (["--role", "service", "--company", "*", "--sub", "x"], "admin tokens only"),
    ],
)
def test_token_usage_errors_exit_2(args: list[str], message: str) -> None:
    res = run("token", *args, env={"JWT_SECRET": SECRET})
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.stderr.split())
    assert res.stdout == ""


def test_token_short_secret_warns_on_stderr_only() -> None:
    res = run("token", "--role", "service", "--company", "acme", "--sub", "x", env={"JWT_SECRET": "short"})
    assert res.exit_code == 0, res.output
    assert res.stdout.count("\n") == 1 and len(res.stdout.strip().split(".")) == 3
    assert "shorter than 32" in " ".join(res.stderr.split())
    assert "short" not in res.stderr.replace("shorter", "")  # the secret itself is never shown


def test_token_without_any_secret_exits_2_with_the_fix(tmp_path: Path) -> None:
    res = run(
        "token", "--role", "service", "--company", "acme", "--sub", "x", "--data-dir", str(tmp_path / "none")
    )
    assert res.exit_code == 2
    err = " ".join(res.stderr.split())
    assert "no JWT secret" in err and "JWT_SECRET" in err and "printd run" in err
    assert res.stdout == ""
    assert not (tmp_path / "none" / "jwt_secret").exists()  # never generates one


def test_token_reads_the_generated_secret_from_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text("generated-secret-0123456789abcdef0123456789\n")
    res = run("token", "--role", "service", "--company", "acme", "--sub", "x", "--data-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    claims = jwt.decode(
        res.stdout.strip(), "generated-secret-0123456789abcdef0123456789", algorithms=["HS256"]
    )
    assert claims["role"] == "service"


def test_token_reads_the_secret_through_a_config_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "jwt_secret").write_text("from-config-data-dir-0123456789abcdef012345\n")
    cfg = tmp_path / "printd.toml"
    cfg.write_text(tomli_w.dumps({"data_dir": str(data)}))
    res = run(
        "token", "--role", "dashboard", "--company", "acme", "--sub", "d", "--secret-from-config", str(cfg)
    )
    assert res.exit_code == 0, res.output
    jwt.decode(res.stdout.strip(), "from-config-data-dir-0123456789abcdef012345", algorithms=["HS256"])
    # JWT_SECRET wins over the generated file, as in printd.
    res = run(
        "token",
        "--role",
        "dashboard",
        "--company",
        "acme",
        "--sub",
        "d",
        "--secret-from-config",
        str(cfg),
        env={"JWT_SECRET": SECRET},
    )
    jwt.decode(res.stdout.strip(), SECRET, algorithms=["HS256"])


def test_token_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "printd.toml"
    cfg.write_text("[server]\nport = 'many'\n")
    res = run(
        "token", "--role", "service", "--company", "acme", "--sub", "x", "--secret-from-config", str(cfg)
    )
    assert res.exit_code == 2
    assert "server.port" in res.stderr


# ------------------------------------------------------------------ config


def test_config_init_writes_a_file_that_loads_to_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "printd.toml"
    res = run("config", "init", str(path))
    assert res.exit_code == 0, res.output
    assert load_config(path, env={}) == load_config(None, env={}) == Config()
    text = path.read_text()
    assert "jwt_secret = " not in text.replace("# jwt_secret = ", "")  # only a commented example
    assert "# [circuits.store]" in text


def test_config_init_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = run("config", "init")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "config" / "printd.toml").is_file()


def test_config_init_comments_every_key() -> None:
    text = render_default_config()
    assert "see printd/config.py" not in text  # no key fell back to the generic comment
    lines = text.splitlines()
    for section, cls in SECTIONS.items():  # the comment above the table is the class docstring
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), section
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    keys += [f"circuits.{f.name}" for f in dataclasses.fields(BreakerConfig)]
    keys += [f.name for f in dataclasses.fields(Config) if f.name not in {*SECTIONS, "circuits"}]
    for key in keys:
        assert key in COMMENTS, key
        name = key.rsplit(".", 1)[-1]
        assert any(line.startswith((f"{name} = ", f"# {name} = ")) for line in lines), key
    for env_var in (
        "PORT",
        "HOST",
        "JWT_SECRET",
        "CORS_ORIGINS",
        "DATABASE_URL",
        "REDIS_URL",
        "INSTANCE_ID",
        "PRINTD_DATA_DIR",
        "STATUS_BATCH_DELAY",
    ):
        assert env_var in text, env_var
    for table in (
        "[server]",
        "[compression]",
        "[auth]",
        "[status]",
        "[jobs]",
        "[ratelimit]",
        "[health]",
        "[store]",
        "[redis]",
        "[circuits.defaults]",
    ):
        assert table in lines, table


def test_repo_config_is_the_generated_one() -> None:
    """config/printd.toml is `printctl config init` output; regenerate it when Config changes."""
    assert (ROOT / "config" / "printd.toml").read_text() == render_default_config()


def test_config_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "printd.toml"
    path.write_text("# mine\n")
    res = run("config", "init", str(path))
    assert res.exit_code == 2
    assert "--force" in res.stderr
    assert path.read_text() == "# mine\n"
    res = run("config", "init", str(path), "--force")
    assert res.exit_code == 0, res.output
    assert load_config(path, env={}) == Config()


def test_config_check_ok(tmp_path: Path) -> None:
    path = tmp_path / "printd.toml"
    assert run("config", "init", str(path)).exit_code == 0
    res = run("config", "check", str(path), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True
    assert run("config", "check", str(path)).exit_code == 0


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nprot = 3001\n", "server.prot"),
        ("[server]\nport = 'x'\n", "server.port"),
        ("[compression]\nlevel = 12\n", "compression.level"),
        ("[circuits.store]\nopen_timeout = -1\n", "open_timeout"),
        ("colour = 'blue'\n", "colour"),
    ],
)
def test_config_check_names_the_bad_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "printd.toml"
    path.write_text(toml)
    res = run("config", "check", str(path))
    assert res.exit_code == 2
    assert key in res.stderr


def test_config_check_production_rules(tmp_path: Path) -> None:
    path = tmp_path / "printd.toml"
    assert run("config", "init", str(path)).exit_code == 0
    res = run("config", "check", str(path), "--production")
    assert res.exit_code == 2
    assert "auth.jwt_secret" in res.stderr


def test_config_check_missing_file(tmp_path: Path) -> None:
    res = run("config", "check", str(tmp_path / "nope.toml"))
    assert res.exit_code == 2
    assert "printctl config init" in " ".join(res.stderr.split())


# ------------------------------------------------------------------ help


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _command_paths(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


COMMANDS = sorted(_command_paths(typer.main.get_command(app)))


def test_all_requested_commands_exist() -> None:
    for path in [
        ("token",),
        ("health",),
        ("instance",),
        ("config", "init"),
        ("config", "check"),
        ("circuits", "list"),
        ("circuits", "reset"),
        ("circuits", "force-open"),
        ("circuits", "disable"),
        ("jobs", "submit"),
        ("jobs", "get"),
        ("jobs", "list"),
        ("printers", "list"),
        ("printers", "test"),
    ]:
        assert path in COMMANDS, path


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_help_has_an_example(path: tuple[str, ...]) -> None:
    res = run(*path, "--help")
    assert res.exit_code == 0, res.output
    assert "Example" in res.stdout


# ------------------------------------------------------------------ local usage errors (no server)


def test_jobs_submit_payload_usage_errors() -> None:
    url = "http://127.0.0.1:9"  # never reached: the input is refused first
    res = run("jobs", "submit", "--printer", "p1", "--text", "a", "--payload", "{}", "--url", url)
    assert res.exit_code == 2
    res = run("jobs", "submit", "--printer", "p1", "--payload", "[1, 2]", "--url", url)
    assert res.exit_code == 2 and "JSON object" in res.stderr
    res = run("jobs", "submit", "--printer", "p1", "--payload", "{nope", "--url", url)
    assert res.exit_code == 2 and "not valid JSON" in res.stderr
    res = run("jobs", "list", "--state", "lost", "--url", url)
    assert res.exit_code == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_unreachable_exits_1() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    res = run("health", "--url", url, "--timeout", "2")
    assert res.exit_code == 1
    assert "cannot reach printd" in res.stderr
    res = run("health", "--url", url, "--timeout", "2", "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["status"] == "unreachable"
    assert run("circuits", "list", "--url", url, "--timeout", "2").exit_code == 1


# ------------------------------------------------------------------ against a real printd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `printd run` subprocess; yields its URL."""
    data = tmp_path_factory.mktemp("printd")
    port = _free_port()
    # Lenient health thresholds: these tests check the CLI, not the machine's load.
    cfg = data / "printd.toml"
    cfg.write_text(
        tomli_w.dumps({"health": {"memory_percent": 100.0, "cpu_percent": 10_000.0, "error_rate": 1e6}})
    )
    exe = Path(sys.executable).parent / "printd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "printd"]
    cmd += ["run", "--config", str(cfg), "--port", str(port), "--data-dir", str(data)]
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update({"JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"})
    log_path = data / "printd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"printd exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                httpx.get(url + "/monitoring/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"printd did not answer:\n{log_path.read_text()}") from None
                time.sleep(0.05)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _token(role: str, company: str = "acme") -> str:
    res = run("token", "--role", role, "--company", company, "--sub", f"{role}-1", env={"JWT_SECRET": SECRET})
    assert res.exit_code == 0, res.output
    return res.stdout.strip()


def test_health(server: str) -> None:
    res = run("health", "--url", server)
    assert res.exit_code == 0, res.output
    assert "ok" in res.stdout and "memory" in res.stdout
    res = run("health", "--json", env={"PRINTD_URL": server})
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"memory", "cpu", "errors"}


def test_instance(server: str) -> None:
    res = run("instance", "--url", server, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert {"connections", "messages", "bytes", "jobs", "memory", "rates"} <= set(body)
    res = run("instance", "--url", server)
    assert res.exit_code == 0, res.output
    assert "connections by role" in res.stdout and "saving" in res.stdout


def test_circuits_list(server: str) -> None:
    res = run("circuits", "list", "--url", server, "--json")
    assert res.exit_code == 0, res.output
    circuits = {c["name"]: c for c in json.loads(res.stdout)["circuits"]}
    assert "store" in circuits
    res = run("circuits", "list", "--url", server)
    assert res.exit_code == 0 and "store" in res.stdout


def test_circuit_actions_need_an_admin_token(server: str) -> None:
    res = run("circuits", "reset", "store", "--url", server)
    assert res.exit_code == 1
    assert "401" in res.stderr and "--role admin" in " ".join(res.stderr.split())
    res = run("circuits", "reset", "store", "--url", server, "--token", _token("service"))
    assert res.exit_code == 1 and "403" in res.stderr


def test_circuit_actions_with_an_admin_token(server: str) -> None:
    admin = _token("admin", "*")
    try:
        res = run("circuits", "force-open", "store", "--url", server, "--token", admin, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["circuit"]["state"] == "forced_open"
        res = run("circuits", "list", "--url", server, "--json")
        assert {c["name"]: c["state"] for c in json.loads(res.stdout)["circuits"]}["store"] == "forced_open"
    finally:
        res = run("circuits", "reset", "store", "--url", server, env={"PRINTD_TOKEN": admin})
    assert res.exit_code == 0, res.output
    assert "closed" in res.stdout
    res = run("circuits", "disable", "nope", "--url", server, "--token", admin)
    assert res.exit_code == 1 and "404" in res.stderr


def test_jobs_and_printers_without_agents(server: str) -> None:
    service = {"PRINTD_URL": server, "PRINTD_TOKEN": _token("service")}
    res = run("jobs", "list", "--json", env=service)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 0
    res = run("printers", "list", "--json", env=service)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["printers"] == []
    res = run("jobs", "submit", "--printer", "p1", "--text", "hi", env=service)
    assert res.exit_code == 1 and "unknown printer" in res.stderr
    res = run("jobs", "get", "nope", env=service)
    assert res.exit_code == 1 and "404" in res.stderr
    res = run("printers", "test", "p1", env=service)
    assert res.exit_code == 1 and "unknown printer" in res.stderr
    res = run("jobs", "list", env={"PRINTD_URL": server})
    assert res.exit_code == 1 and "401" in res.stderr
