"""`printctl loadtest` refuses what it cannot run before it starts anything: exit 2, one line
naming the option (with --json, the error object on stdout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from printctl.loadtest import bare_json_to_stdout
from tests.cli import run

SECRET = "loadtest-cli-secret-0123456789abcdef0123"
LOCAL = "http://127.0.0.1:9"  # never reached: every case here is refused first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "0"], "--agents must be at least 1"),
        (["--companies", "20", "--agents", "10"], "--companies must be 1 to --agents"),
        (["--duration", "0"], "--duration must be more than 0"),
        (["--duration", "7200"], "at most 3600 s"),
        (["--job-rate", "-1"], "--job-rate must be"),
        (["--workers", "0"], "--workers must be"),
        (["--max-p99-job-ms", "0"], "--max-p99-job-ms must be more than 0"),
        (["--max-errors", "-1"], "--max-errors must be 0 or more"),
        (["--url", "https://127.0.0.1:3001"], "TLS is not supported"),
        (["--url", "ftp://127.0.0.1"], "expected http://HOST[:PORT]"),
        (["--url", "http://192.0.2.10:3001"], "--i-know-this-is-production"),
        (["--bogus"], "No such option"),
    ],
)
def test_usage_errors_exit_2_naming_the_option(args: list[str], message: str) -> None:
    res = run("loadtest", "--url", LOCAL, *args, env={"JWT_SECRET": SECRET})
    assert res.exit_code == 2, res.output
    assert message in res.stderr


def test_usage_error_with_bare_json_is_one_error_object_on_stdout() -> None:
    res = run("loadtest", "--url", LOCAL, "--json", "--agents", "0", env={"JWT_SECRET": SECRET})
    assert res.exit_code == 2
    body = json.loads(res.stdout)
    assert body["ok"] is False and "--agents" in body["error"]


def test_an_unwritable_json_file_is_refused_before_the_run(tmp_path: Path) -> None:
    res = run(
        "loadtest",
        "--url",
        LOCAL,
        "--json",
        str(tmp_path / "no" / "such" / "dir.json"),
        env={"JWT_SECRET": SECRET},
    )
    assert res.exit_code == 2
    assert "--json" in res.stderr


def test_no_secret_anywhere_exits_2_with_the_fix(tmp_path: Path) -> None:
    res = run("loadtest", "--url", LOCAL, "--data-dir", str(tmp_path))
    assert res.exit_code == 2
    assert "JWT_SECRET" in res.stderr or "--data-dir" in res.stderr


def test_printd_not_answering_exits_1_before_any_load() -> None:
    res = run("loadtest", "--url", LOCAL, env={"JWT_SECRET": SECRET})
    assert res.exit_code == 1
    assert "cannot reach printd" in res.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--json"], ["--json", "-"]),
        (["--json", "--agents", "5"], ["--json", "-", "--agents", "5"]),
        (["--json", "report.json"], ["--json", "report.json"]),
        (["--json", "-"], ["--json", "-"]),
        (["--json=r.json"], ["--json=r.json"]),
    ],
)
def test_a_bare_json_flag_means_stdout(argv: list[str], expected: list[str]) -> None:
    assert bare_json_to_stdout(argv) == expected
