"""`printctl token` starts light: it loads none of what the agent, the cluster tooling or printd's
runtime need (trio, websockets, prometheus_client, psutil, httpx). Checked on `sys.modules` at
exit of a fresh interpreter, as an operator's shell starts it (`-X importtime` would miss what
`importlib.import_module` loads: it reports only `import` statements)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import SECRET

HEAVY = frozenset({"trio", "websockets", "prometheus_client", "psutil", "httpx"})


#: `python -m printctl.main ARGS`, then the names of every module loaded, on stderr at exit
PROBE = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n"))
sys.argv = ["printctl", *sys.argv[1:]]
runpy.run_module("printctl.main", run_name="__main__")
"""


def imported(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {**os.environ, "JWT_SECRET": SECRET}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=60
    )
    line = next(x for x in run.stderr.splitlines() if x.startswith("MODULES "))
    return run, set(line.split()[1:])


@pytest.mark.parametrize(
    "args",
    [
        ("token", "--help"),
        ("token", "--role", "agent", "--company", "acme", "--branch", "b1", "--sub", "agent-1"),
        ("agent", "--help"),
    ],
    ids=["token-help", "token", "agent-help"],
)
def test_light_commands_import_nothing_heavy(args: tuple[str, ...]) -> None:
    run, modules = imported(*args)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"printctl.{args[0]}" in modules  # the probe saw the command's own module
    assert sorted(HEAVY & {m.split(".")[0] for m in modules}) == []
    if args[1] != "--help":
        assert run.stdout.count(".") == 2  # a JWT on stdout


def test_the_agent_s_decisions_load_without_its_runtime() -> None:
    """The load generator's workers share the agent's journal and decisions, not its trio tasks."""
    probe = "import sys, printctl.agent, printctl.loadgen.worker; print(' '.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(HEAVY & {m.split(".")[0] for m in run.stdout.split()}) == []


def test_the_command_list_still_names_every_command() -> None:
    run, _ = imported("--help")
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("token", "health", "instance", "agent", "verify-prints", "deploy", "loadtest", "config"):
        assert name in run.stdout
    for name in ("circuits", "jobs", "printers", "cluster"):
        assert name in run.stdout
