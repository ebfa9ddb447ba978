"""printctl against a real printd: health, instance, circuits, jobs and printers commands."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli import run
from tests.conftest import Printd, token

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

    res = run("instance", "--url", server.url, "--json")
    assert res.exit_code == 0, res.output
    assert {"connections", "messages", "bytes", "jobs", "memory", "rates"} <= set(json.loads(res.stdout))
    res = run("instance", "--url", server.url)
    assert res.exit_code == 0, res.output
    assert "connections by role" in res.stdout and "saving" in res.stdout

    res = run("circuits", "list", "--url", server.url, "--json")
    assert res.exit_code == 0, res.output
    assert "store" in {c["name"] for c in json.loads(res.stdout)["circuits"]}
    res = run("circuits", "list", "--url", server.url)
    assert res.exit_code == 0 and "store" in res.stdout


def test_circuit_actions_need_an_admin_token_and_take_effect(server: Printd) -> None:
    res = run("circuits", "reset", "store", "--url", server.url)
    assert res.exit_code == 1
    assert "401" in res.stderr and "--role admin" in " ".join(res.stderr.split())
    res = run("circuits", "reset", "store", "--url", server.url, "--token", token("service"))
    assert res.exit_code == 1 and "403" in res.stderr

    admin = token("admin", "*")
    res = run("circuits", "force-open", "store", "--url", server.url, "--token", admin, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["circuit"]["state"] == "forced_open"
    res = run("circuits", "list", "--url", server.url, "--json")
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
    assert res.exit_code == 1 and "401" in res.stderr


def test_ids_are_percent_encoded_into_the_path(server: Printd) -> None:
    """printd decodes path parameters, so printctl sends any id, encoded, and printd answers for it."""
    service = {"PRINTD_URL": server.url, "PRINTD_TOKEN": token("service")}
    res = run("jobs", "get", "a/b c?d#e%f", env=service)
    assert res.exit_code == 1, res.output
    assert "no job 'a/b c?d#e%f'" in res.stderr
    res = run("printers", "test", "bar 2/3", env=service)
    assert res.exit_code == 1 and "unknown printer 'bar 2/3'" in res.stderr
    res = run("jobs", "get", "..", env=service)  # not a dot-segment that would climb the path
    assert res.exit_code == 1 and "no job '..'" in res.stderr
    res = run("circuits", "reset", "no/such", "--url", server.url, "--token", token("admin", "*"))
    assert res.exit_code == 1 and "404" in res.stderr and "no/such" in res.stderr


def test_http_errors_under_json_are_one_error_object(server: Printd) -> None:
    service = {"PRINTD_URL": server.url, "PRINTD_TOKEN": token("service")}
    for args in (
        ["jobs", "get", "nope"],
        ["jobs", "submit", "--printer", "p1", "--text", "hi"],
        ["printers", "test", "p1"],
        ["circuits", "reset", "store"],  # a service token: 403
    ):
        res = run(*args, "--json", env=service)
        assert res.exit_code == 1, (args, res.output)
        body = json.loads(res.stdout)
        assert body["ok"] is False and body["exit_code"] == 1, body
        assert ("404" in body["error"]) or ("403" in body["error"]), body
