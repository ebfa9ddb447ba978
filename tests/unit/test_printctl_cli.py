"""printctl operator commands without a server: token, config, help, usage errors.

The commands that talk to printd are tested against a real one in tests/integration/test_printctl.py.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
import tomli_w
import typer

from printctl.common import path_segment
from printctl.config_cmd import COMMENTS, render_default_config
from printctl.main import app
from printd.breakers.core import BreakerConfig
from printd.config import SECTIONS, Config, load_config
from tests.cli import CLEAN_ENV, run

ROOT = Path(__file__).resolve().parents[2]
SECRET = "printctl-test-secret-0123456789abcdef0123"


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


def test_path_segment_encodes_what_the_router_decodes() -> None:
    for value in ("kitchen-1", "a/b c?d#e%f", "é", ".", "..", "..."):
        encoded = path_segment("ID", value)
        assert "/" not in encoded and encoded not in (".", "..")
        assert unquote(encoded) == value  # what printd's Router.resolve hands the handler
    with pytest.raises(typer.Exit) as exc:
        path_segment("ID", "")
    assert exc.value.exit_code == 2


# ------------------------------------------------------------------ --json on failure

UNREACHABLE = "http://127.0.0.1:9"  # discard port: connection refused


def _failures(tmp: Path) -> list[tuple[list[str], int]]:
    """One failing invocation per command that has --json, with the exit code it must give."""
    return [
        (["token", "--role", "root", "--company", "acme", "--sub", "x"], 2),
        (["config", "init", str(tmp)], 2),
        (["config", "check", str(tmp / "missing.toml")], 2),
        (["health", "--url", UNREACHABLE, "--timeout", "2"], 1),
        (["instance", "--url", UNREACHABLE, "--timeout", "2"], 1),
        (["agent", "--printer", "k1", "--output", str(tmp)], 2),
        (["verify-prints", "--accepted", str(tmp / "missing.jsonl"), str(tmp)], 2),
        (["circuits", "list", "--url", UNREACHABLE], 1),
        (["circuits", "reset", "store", "--url", UNREACHABLE], 1),
        (["circuits", "force-open", "store", "--url", UNREACHABLE], 1),
        (["circuits", "disable", "store", "--url", UNREACHABLE], 1),
        (["jobs", "submit", "--printer", "k1", "--url", UNREACHABLE], 1),
        (["jobs", "get", "j1", "--url", UNREACHABLE], 1),
        (["jobs", "list", "--url", UNREACHABLE], 1),
        (["jobs", "list", "--state", "lost", "--url", UNREACHABLE], 2),  # refused by the option parser
        (["printers", "list", "--url", UNREACHABLE], 1),
        (["printers", "test", "k1", "--url", UNREACHABLE], 1),
        (["printers", "wait", "k1", "--url", UNREACHABLE], 1),
        (["printers", "move", "k1", "--branch", "b", "--agent", "a", "--url", UNREACHABLE], 1),
        (["deploy", "--config", str(tmp / "missing.toml")], 2),
        (["cluster", "up", "--instances", "0", "--state-dir", str(tmp / "cl")], 2),
        (["cluster", "down", "--timeout", "-1", "--state-dir", str(tmp / "cl")], 2),
        (["cluster", "ls", "--state-dir", str(tmp / "cl")], 1),
        (["cluster", "status", "--url", UNREACHABLE, "--timeout", "2"], 1),
        (["cluster", "rebalance", "--url", UNREACHABLE, "--timeout", "2"], 1),
        (["cluster", "status", "--redis", "redis://:pw@127.0.0.1:1/0", "--timeout", "1"], 1),
        (["loadtest", "--agents", "0"], 2),
        (["failover-test", "--agents", "0", "--state-dir", str(tmp / "cl")], 2),
    ]


def test_every_json_command_is_covered_by_the_failure_test(tmp_path: Path) -> None:
    covered = {tuple(a for a in args if not a.startswith("-"))[:2] for args, _ in _failures(tmp_path)}
    for path in COMMANDS:
        res = run(*path, "--help")
        if "--json" in res.stdout:
            assert any(path == c[: len(path)] for c in covered), path


def test_json_failure_is_one_error_object_on_stdout(tmp_path: Path) -> None:
    for args, code in _failures(tmp_path):
        res = run(*args, "--json", env={"JWT_SECRET": SECRET})
        assert res.exit_code == code, (args, res.output)
        body = json.loads(res.stdout)  # exactly one JSON document
        assert body["ok"] is False and body["exit_code"] == code, (args, body)
        assert isinstance(body["error"], str) and body["error"], (args, body)
        assert "\n" not in body["error"]


# ------------------------------------------------------------------ verify-prints


def _print_log(directory: Path, *job_ids: str, torn: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"job_id": j, "printer_id": "k1", "printed_at": 1.0}) + "\n" for j in job_ids)
    (directory / "prints.jsonl").write_text(lines + torn)
    return directory


def test_verify_prints_skips_and_counts_a_torn_last_line(tmp_path: Path) -> None:
    """The agent expects a torn last line after a crash (it ends it before appending again)."""
    accepted = tmp_path / "accepted.jsonl"
    accepted.write_text('{"job_id": "j1"}\n{"job_id": "j2"}\n')
    agent = _print_log(tmp_path / "agent", "j1", "j2", torn='{"job_id": "j3", "printer_id": "k')
    res = run("verify-prints", "--accepted", str(accepted), str(agent))
    assert res.exit_code == 0, res.output
    assert "1 torn line" in " ".join(res.output.split())
    res = run("verify-prints", "--accepted", str(accepted), str(agent), "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["ok"] is True and body["printed"] == 2 and body["torn"] == 1


def test_verify_prints_torn_line_in_the_middle_after_a_restart(tmp_path: Path) -> None:
    accepted = tmp_path / "accepted.txt"
    accepted.write_text("j1\nj3\n")
    # j2's line was torn by a crash (its outcome is "unknown", never printed again); the restarted
    # agent ended that line and printed j3 after it
    log = _print_log(tmp_path / "agent", "j1", torn='{"job_id": "j2", "prin\n') / "prints.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"job_id": "j3"}) + "\n")
    res = run("verify-prints", "--accepted", str(accepted), str(log), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["torn"] == 1


def test_verify_prints_missing_paths_are_usage_errors(tmp_path: Path) -> None:
    accepted = tmp_path / "accepted.jsonl"
    accepted.write_text('{"job_id": "j1"}\n')
    agent = _print_log(tmp_path / "agent", "j1")
    res = run("verify-prints", "--accepted", str(accepted), str(agent), str(tmp_path / "typo"))
    assert res.exit_code == 2, res.output
    assert "typo" in res.stderr and "no such" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run("verify-prints", "--accepted", str(accepted), str(tmp_path / "empty"))
    assert res.exit_code == 2, res.output
    assert "prints.jsonl" in res.stderr
    res = run("verify-prints", "--accepted", str(tmp_path / "nope.jsonl"), str(agent))
    assert res.exit_code == 2, res.output


def test_verify_prints_unreadable_accepted_file_is_a_usage_error(tmp_path: Path) -> None:
    accepted = tmp_path / "accepted.jsonl"
    accepted.write_text('{"job_id": "j1"}\n{"job_id": "j2", "pr\n{"state": "printed"}\n')
    agent = _print_log(tmp_path / "agent", "j1")
    res = run("verify-prints", "--accepted", str(accepted), str(agent))
    assert res.exit_code == 2, res.output
    assert "line 2" in res.stderr


# ------------------------------------------------------------------ one config rule, versions


def test_token_and_config_check_find_the_config_like_printd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No flag, no $PRINTD_CONFIG: ./config/printd.toml (what `config init` writes) is the file."""
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "config" / "printd.toml"
    local.parent.mkdir()
    local.write_text(tomli_w.dumps({"auth": {"jwt_secret": SECRET}, "server": {"port": 4111}}))
    res = run("token", "--role", "service", "--company", "acme", "--sub", "x")
    assert res.exit_code == 0, res.output
    jwt.decode(res.stdout.strip(), SECRET, algorithms=["HS256"])
    res = run("config", "check", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["listen"] == "127.0.0.1:4111"
    other = tmp_path / "other.toml"
    other.write_text(tomli_w.dumps({"server": {"port": 4222}}))
    res = run("config", "check", "--json", env={"PRINTD_CONFIG": str(other)})
    assert json.loads(res.stdout)["listen"] == "127.0.0.1:4222"


def test_printd_check_config_finds_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from printd.cli import app as printd_app

    monkeypatch.chdir(tmp_path)
    local = tmp_path / "config" / "printd.toml"
    local.parent.mkdir()
    local.write_text(tomli_w.dumps({"server": {"port": 4333}}))
    res = CliRunner(env=CLEAN_ENV).invoke(printd_app, ["check-config"])
    assert res.exit_code == 0, res.output
    assert f"config={local.resolve()}" in res.stdout and "listen=127.0.0.1:4333" in res.stdout
    res = CliRunner(env={**CLEAN_ENV, "REDIS_URL": "notaurl"}).invoke(printd_app, ["check-config"])
    assert res.exit_code == 2 and "redis.url (REDIS_URL)" in res.stderr


def test_both_tools_print_the_package_version() -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from printd.cli import app as printd_app

    res = run("--version")
    assert res.exit_code == 0 and res.stdout == f"printctl {version('printd')}\n"
    res = CliRunner().invoke(printd_app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"printd {version('printd')}\n"
