"""printctl against a real printd: health, instance, circuits, jobs and printers commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run
from tests.conftest import Printd, free_port, token
from tests.integration.test_exactly_once import Agent

#: These tests check the CLI, not the machine's load: health thresholds nothing here can reach.
LENIENT_HEALTH = {"health": {"memory_percent": 100.0, "cpu_percent": 10_000.0, "error_rate": 1e6}}


@pytest.fixture
def server(printd_factory: Any) -> Printd:
    p: Printd = printd_factory(config=LENIENT_HEALTH)
    return p


def test_health_instance_and_circuits_list(server: Printd) -> None:
    res = run("health", "--url", server.url)
    assert res.exit_code == 0, res.output
    assert "ok" in res.stdout and "memory" in res.stdout
    res = run("health", "--json", env={"PRINTD_URL": server.url})
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"memory", "cpu", "errors"}

    res = run("instance", "--url", server.url)
    assert res.exit_code == 2 and "401" in res.stderr  # figures name tenants: a token is needed
    ops = {"PRINTD_TOKEN": token("admin", "*", sub="ops-1")}
    res = run("instance", "--url", server.url, "--json", env=ops)
    assert res.exit_code == 0, res.output
    assert {"connections", "messages", "bytes", "jobs", "memory", "rates"} <= set(json.loads(res.stdout))
    res = run("instance", "--url", server.url, env=ops)
    assert res.exit_code == 0, res.output
    assert "connections by role" in res.stdout and "saving" in res.stdout

    res = run("circuits", "list", "--url", server.url, "--json", env=ops)
    assert res.exit_code == 0, res.output
    assert "store" in {c["name"] for c in json.loads(res.stdout)["circuits"]}
    res = run("circuits", "list", "--url", server.url, env=ops)
    assert res.exit_code == 0 and "store" in res.stdout


def test_circuit_actions_need_an_admin_token_and_take_effect(server: Printd) -> None:
    res = run("circuits", "reset", "store", "--url", server.url)
    assert res.exit_code == 2  # credentials refused: fix the token, not a failed check
    assert "401" in res.stderr and "--role admin" in " ".join(res.stderr.split())
    res = run("circuits", "reset", "store", "--url", server.url, "--token", token("service"))
    assert res.exit_code == 2 and "403" in res.stderr

    admin = token("admin", "*")
    res = run("circuits", "force-open", "store", "--url", server.url, "--token", admin, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["circuit"]["state"] == "forced_open"
    res = run("circuits", "list", "--url", server.url, "--json", "--token", admin)
    assert {c["name"]: c["state"] for c in json.loads(res.stdout)["circuits"]}["store"] == "forced_open"
    res = run("circuits", "reset", "store", "--url", server.url, env={"PRINTD_TOKEN": admin})
    assert res.exit_code == 0, res.output
    assert "closed" in res.stdout
    res = run("circuits", "disable", "nope", "--url", server.url, "--token", admin)
    assert res.exit_code == 1 and "404" in res.stderr


def test_jobs_and_printers_without_agents(server: Printd) -> None:
    service = {"PRINTD_URL": server.url, "PRINTD_TOKEN": token("service")}
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
    res = run("jobs", "list", env={"PRINTD_URL": server.url})
    assert res.exit_code == 2 and "401" in res.stderr


def test_ids_are_percent_encoded_into_the_path(server: Printd) -> None:
    """printctl sends any id, percent-encoded, so printd itself judges it: ids outside the id
    character set are refused with the rule (a usage error), not misrouted to another path."""
    service = {"PRINTD_URL": server.url, "PRINTD_TOKEN": token("service")}
    res = run("jobs", "get", "a/b c?d#e%f", env=service)
    assert res.exit_code == 2, res.output
    assert "'job_id' must be 1-128 characters" in res.stderr
    res = run("printers", "test", "bar 2/3", env=service)
    assert res.exit_code == 2 and "'printer_id' must be 1-128 characters" in res.stderr
    res = run("jobs", "get", "..", env=service)  # not a dot-segment that would climb the path
    assert res.exit_code == 1 and "no job '..'" in res.stderr
    res = run("circuits", "reset", "no/such", "--url", server.url, "--token", token("admin", "*"))
    assert res.exit_code == 1 and "404" in res.stderr and "no/such" in res.stderr


def test_http_errors_under_json_are_one_error_object(server: Printd) -> None:
    service = {"PRINTD_URL": server.url, "PRINTD_TOKEN": token("service")}
    for args, code in (
        (["jobs", "get", "nope"], 1),
        (["jobs", "submit", "--printer", "p1", "--text", "hi"], 1),
        (["printers", "test", "p1"], 1),
        (["circuits", "reset", "store"], 2),  # a service token: 403, fix the token
    ):
        res = run(*args, "--json", env=service)
        assert res.exit_code == code, (args, res.output)
        body = json.loads(res.stdout)
        assert body["ok"] is False and body["exit_code"] == code, body
        assert ("404" in body["error"]) or ("403" in body["error"]), body


class NotPrintd(BaseHTTPRequestHandler):
    """A web server that is not printd: an HTML page with the status in the path's first part."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        first = self.path.strip("/").split("/")[0]
        status = int(first) if first.isdigit() else 404
        body = b"<!DOCTYPE html>\n<html>\n<body>\n<h1>Not Found</h1>\n</body>\n</html>\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def not_printd() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotPrintd)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


HTTP_COMMANDS = [
    ["health"],
    ["instance"],
    ["circuits", "list"],
    ["circuits", "reset", "store"],
    ["jobs", "submit", "--printer", "k1", "--text", "hi"],
    ["jobs", "get", "j1"],
    ["jobs", "list"],
    ["printers", "list"],
    ["printers", "test", "k1"],
]


@pytest.mark.parametrize("args", HTTP_COMMANDS, ids=" ".join)
def test_a_url_that_is_not_printd_is_a_usage_error_in_one_line(not_printd: str, args: list[str]) -> None:
    for base in (not_printd, not_printd + "/200"):  # a 404 page, and a 200 page
        res = run(*args, env={"PRINTD_URL": base, "PRINTD_TOKEN": token("admin", "acme")})
        assert res.exit_code == 2, (base, res.output)
        assert res.stderr.count("\n") == 1 and "<html>" not in res.stderr, res.stderr
        assert "is --url a printd?" in res.stderr


@pytest.mark.parametrize("args", HTTP_COMMANDS, ids=" ".join)
def test_a_proxy_error_page_means_printd_did_not_answer(not_printd: str, args: list[str]) -> None:
    """A 502/503/504 page from a proxy in front of printd: printd is down there, not a wrong URL."""
    res = run(*args, env={"PRINTD_URL": not_printd + "/502", "PRINTD_TOKEN": token("admin", "acme")})
    assert res.exit_code == 1, res.output
    assert res.stderr.count("\n") == 1 and "<html>" not in res.stderr, res.stderr
    assert "502" in res.stderr


def test_agent_pointed_at_a_url_that_is_not_printd_exits_2(not_printd: str, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "printctl.main", "agent", "--url", not_printd, "--output", str(tmp_path)]
    args += ["--token", token("agent", "acme"), "--printer", "k1"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "is --url a printd?" in res.stderr and "<html>" not in res.stderr + res.stdout


def test_health_wait_returns_once_a_starting_printd_is_ok(printd_factory: Any) -> None:
    """What a script (or the README) runs right after starting printd in the background."""
    p: Printd = printd_factory(start=False, config=LENIENT_HEALTH)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "printctl.main", "health", "--url", p.url, "--wait", "60", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.start()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert json.loads(out)["status"] == "ok"
    res = run("health", "--url", f"http://127.0.0.1:{free_port()}", "--wait", "0.5")
    assert res.exit_code == 1 and "cannot reach printd" in res.stderr


def test_printers_wait_returns_once_the_agent_announced_them(server: Printd, tmp_path: Path) -> None:
    service = {"PRINTD_URL": server.url, "PRINTD_TOKEN": token("service")}
    res = run("printers", "wait", "k1", "--timeout", "0.5", env=service)
    assert res.exit_code == 1 and "not online after 0.5 s: k1" in res.stderr
    waiting = subprocess.Popen(
        [sys.executable, "-m", "printctl.main", "printers", "wait", "k1", "k2", "--timeout", "60", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **service},
    )
    agent = Agent(server, tmp_path / "out").start()  # announces k1 and k2
    try:
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert [p["printer_id"] for p in json.loads(out)["printers"]] == ["k1", "k2"]
    finally:
        agent.stop()
