"""How a fault is applied and healed: on the local cluster of `printctl cluster up`, or on a
deployed one through the operator's own commands. The agents' network cut is the same for both:
the load generator reaches the front through a proxy of the failover test's own.

Local: the processes recorded in the state directory are signalled (only while their pid has the
recorded start time, as `cluster down` does), and what was stopped is started again through
`printctl.cluster.restart`, the same code `cluster up` starts it with. Redis and the database
need `cluster up --private-redis --db-proxy`.

Deployed: `--stop-cmd` injects and `--start-cmd` heals, each a command line (no shell; write
`sh -c '...'` for one) with placeholders: {fault} (kill, drain, pause, redis, db), {target} (the
instance id, `redis` or `database`), {host} and {url} (the instance's, from membership; empty
for redis and db) and {signal} (stop: KILL, TERM or STOP for an instance, KILL for redis and db;
start: CONT after a pause, else empty).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import orjson

from printctl.cluster import LocalCluster, Process, StartFailed, proxy_state_file, restart
from printctl.faults.plan import INSTANCE_FAULTS, Fault
from printctl.faults.proxy import TcpProxy, read_state
from printctl.loadgen.target import Target

STOP_WAIT = 10.0  # a SIGKILLed process is gone within this
DRAIN_WAIT = 30.0  # a drained instance exits within this (shutdown_grace is 5 s)
START_TIMEOUT = 60.0  # a restarted instance may first wait out its old membership entry (one TTL)
COMMAND_TIMEOUT = 120.0
PLACEHOLDERS = ("fault", "target", "host", "url", "signal")
STOP_SIGNALS = {
    Fault.KILL: "KILL",
    Fault.DRAIN: "TERM",
    Fault.PAUSE: "STOP",
    Fault.REDIS: "KILL",
    Fault.DB: "KILL",
}


class FaultError(Exception):
    """A fault could not be applied or healed; the message says what happened."""


class Injector(Protocol):
    faults: frozenset[Fault]  # what this injector can do

    def instances(self) -> dict[str, str]:
        """The cluster's instances: id -> URL."""

    def inject(self, fault: Fault, target: str) -> None: ...

    def heal(self, fault: Fault, target: str) -> list[str]:
        """Undo the fault; what went wrong on the way (the heal still happened)."""

    def close(self) -> None: ...


# ------------------------------------------------------------------ the agents' network


_TOKEN = re.compile(rb"(?:Bearer |[?&]token=)[\w-]+\.([\w-]+)\.")


def agent_upgrade(head: bytes) -> bool:
    """The first bytes of an agent's WebSocket upgrade: GET .../printing-ws with a token whose
    role is `agent` (read, not verified: the proxy only sorts connections)."""
    request_line = head.partition(b"\r\n")[0]
    if not request_line.startswith(b"GET ") or b"/printing-ws" not in request_line:
        return False
    found = _TOKEN.search(head)
    if found is None:
        return False
    payload = found.group(1)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return False
    return isinstance(claims, dict) and claims.get("role") == "agent"


class AgentNetwork:
    """The agents' way to the front: the load generator connects through this proxy, so a cut
    resets the agents' connections and refuses their new ones while dashboards and back offices
    pass."""

    def __init__(self, front: Target) -> None:
        self.proxy = TcpProxy(front.address)
        self.url = f"http://127.0.0.1:{self.proxy.port}{front.base_path}"

    def cut(self) -> None:
        self.proxy.down(agent_upgrade)

    def restore(self) -> None:
        self.proxy.up()

    def close(self) -> None:
        self.proxy.close()


# ------------------------------------------------------------------ a local cluster


def _wait_gone(proc: Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class LocalInjector:
    def __init__(self, state_dir: Path, network: AgentNetwork | None) -> None:
        self.state_dir = state_dir
        self.network = network
        cluster = self._cluster()
        kinds = {p.kind for p in cluster.processes}
        can = set(INSTANCE_FAULTS) if sum(p.kind == "printd" for p in cluster.processes) > 1 else set()
        can |= {Fault.REDIS} if "redis" in kinds else set()
        can |= {Fault.DB} if "db-proxy" in kinds else set()
        can |= {Fault.AGENT_CUT} if network is not None else set()
        self.faults = frozenset(can)
        self._drained: dict[str, Process] = {}

    def _cluster(self) -> LocalCluster:
        cluster = LocalCluster.load(self.state_dir)
        if cluster is None:
            raise FaultError(f"no local cluster in {self.state_dir}")
        return cluster

    def instances(self) -> dict[str, str]:
        return {p.name: p.url for p in self._cluster().processes if p.kind == "printd"}

    def _signal(self, name: str, sig: int) -> Process:
        try:
            proc = self._cluster().process(name)
        except StartFailed as exc:
            raise FaultError(exc.message) from None
        if not proc.alive():
            raise FaultError(f"{name} is not running (pid {proc.pid})")
        os.kill(proc.pid, sig)
        return proc

    def _proxy(self, sig: int, want: str) -> None:
        self._signal("db-proxy", sig)
        path = proxy_state_file(self.state_dir, "db-proxy")
        deadline = time.monotonic() + STOP_WAIT
        while read_state(path) != want:
            if time.monotonic() > deadline:
                raise FaultError(f"the database proxy did not say {want!r} within {STOP_WAIT:g} s")
            time.sleep(0.02)

    def _restart(self, name: str) -> None:
        try:
            restart(self.state_dir, name, START_TIMEOUT)
        except StartFailed as exc:
            raise FaultError(exc.message) from None

    def inject(self, fault: Fault, target: str) -> None:
        if fault is Fault.KILL or fault is Fault.REDIS:
            name = target if fault is Fault.KILL else "redis"
            if not _wait_gone(self._signal(name, signal.SIGKILL), STOP_WAIT):
                raise FaultError(f"{name} still runs {STOP_WAIT:g} s after SIGKILL")
        elif fault is Fault.DRAIN:
            self._drained[target] = self._signal(target, signal.SIGTERM)
        elif fault is Fault.PAUSE:
            self._signal(target, signal.SIGSTOP)
        elif fault is Fault.DB:
            self._proxy(signal.SIGUSR1, "down")
        elif self.network is not None:
            self.network.cut()

    def heal(self, fault: Fault, target: str) -> list[str]:
        problems = []
        if fault is Fault.KILL or fault is Fault.REDIS:
            self._restart(target if fault is Fault.KILL else "redis")
        elif fault is Fault.DRAIN:
            proc = self._drained.pop(target)
            if not _wait_gone(proc, DRAIN_WAIT):
                os.kill(proc.pid, signal.SIGKILL)
                _wait_gone(proc, STOP_WAIT)
                problems.append(f"{target} had not exited {DRAIN_WAIT:g} s after SIGTERM: killed")
            self._restart(target)
        elif fault is Fault.PAUSE:
            self._signal(target, signal.SIGCONT)
        elif fault is Fault.DB:
            self._proxy(signal.SIGUSR2, "up")
        elif self.network is not None:
            self.network.restore()
        return problems

    def close(self) -> None:
        if self.network is not None:
            self.network.close()


# ------------------------------------------------------------------ a deployed cluster


def render(template: str, values: dict[str, str]) -> list[str]:
    """The command line: the template split like a shell would (no shell runs), then each word's
    placeholders filled, so a value can never become a second word or a shell command."""
    return [word.format_map(values) for word in shlex.split(template)]


def template_problem(template: str) -> str | None:
    """Why a --stop-cmd/--start-cmd template cannot be used (None: it can)."""
    try:
        words = render(template, dict.fromkeys(PLACEHOLDERS, "x"))
    except ValueError as exc:
        return f"{template!r}: {exc}"
    except (KeyError, IndexError) as exc:
        return (
            f"{template!r}: unknown placeholder {exc}; use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    return None if words else "an empty command"


class CommandInjector:
    def __init__(
        self, stop_cmd: str, start_cmd: str, instances: dict[str, str], network: AgentNetwork | None
    ) -> None:
        self.stop_cmd = stop_cmd
        self.start_cmd = start_cmd
        self._instances = dict(instances)
        self.network = network
        can = set(INSTANCE_FAULTS) if len(instances) > 1 else set()
        self.faults = frozenset(can | {Fault.REDIS, Fault.DB} | ({Fault.AGENT_CUT} if network else set()))

    def instances(self) -> dict[str, str]:
        return dict(self._instances)

    def _run(self, template: str, fault: Fault, target: str, sig: str) -> None:
        url = self._instances.get(target, "") if fault in INSTANCE_FAULTS else ""
        host = urlsplit(url).hostname or ""
        values = {"fault": str(fault), "target": target, "host": host, "url": url, "signal": sig}
        argv = render(template, values)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FaultError(f"`{shlex.join(argv)}`: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise FaultError(f"`{shlex.join(argv)}` exited {done.returncode}: {' / '.join(tail)}")

    def inject(self, fault: Fault, target: str) -> None:
        if fault is Fault.AGENT_CUT:
            if self.network is not None:
                self.network.cut()
            return
        self._run(self.stop_cmd, fault, target, STOP_SIGNALS[fault])

    def heal(self, fault: Fault, target: str) -> list[str]:
        if fault is Fault.AGENT_CUT:
            if self.network is not None:
                self.network.restore()
            return []
        self._run(self.start_cmd, fault, target, "CONT" if fault is Fault.PAUSE else "")
        return []

    def close(self) -> None:
        if self.network is not None:
            self.network.close()
