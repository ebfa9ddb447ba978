"""What the fault drills share: reference agents with journals, an nginx front on loopback, a
steady stream of orders from POS loops that retry with the same Idempotency-Key, and the ending
every drill has: wait until every accepted job finished, then the exactly-once checker over the
agents' print logs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from printctl.checker import compare, read_print_log
from printctl.clusterspec import ClusterSpec, InstanceSpec, NginxSpec
from printctl.deploy import render_site, write_nginx_prefix
from tests.conftest import Printd, free_port, token

SVC = token("service", "acme", sub="pos-1")
OPS = token("admin", "*", sub="ops-1")
FINAL = ("printed", "failed", "expired")


class Agent:
    """`printctl agent`, the reference agent: journals before printing, de-duplicates redeliveries,
    writes each print to OUT/prints.jsonl (what the checker reads)."""

    def __init__(
        self,
        url: str,
        out: Path,
        *extra: str,
        sub: str = "agent-1",
        printers: tuple[str, ...] = ("k1", "k2"),
        company: str = "acme",
    ) -> None:
        self.url, self.out, self.extra, self.sub, self.printers = url, out, extra, sub, printers
        self.company = company
        self.log_path = out.parent / f"{sub}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Agent:
        args = [sys.executable, "-m", "printctl.main", "agent", "--url", self.url, "--output", str(self.out)]
        args += ["--json", "--token", token("agent", self.company, sub=self.sub), "--max-backoff", "1"]
        for printer in self.printers:
            args += ["--printer", printer]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*args, *self.extra, *extra], stdout=log, stderr=subprocess.STDOUT)
        return self

    def events(self, name: str) -> list[dict[str, Any]]:
        """The agent's --json report lines with this event name."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                out.append(record)
        return out

    def instance(self) -> str | None:
        """The instance of the agent's latest connection (from its `connected` report)."""
        connected = self.events("connected")
        return str(connected[-1].get("instance")) if connected else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Front:
    """nginx in front of the instances, rendered the way `printctl deploy` renders production's
    site (least_conn, next upstream on error and on a draining 503), on its own prefix."""

    def __init__(self, nodes: list[Printd], workdir: Path) -> None:
        self.port = free_port()
        spec = ClusterSpec(
            name="drill",
            instances=tuple(InstanceSpec(f"i{k}", p.port) for k, p in enumerate(nodes, 1)),
            nginx=NginxSpec(port=self.port),
            mode="development",
        )
        self.prefix = workdir / "nginx"
        self.conf = write_nginx_prefix(self.prefix, render_site(spec, source="tests/drill.py"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Front:
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.prefix), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.prefix / "stderr.log", "ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/monitoring/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Orders:
    """POS loops submitting orders through one URL for a while, each retried with its own
    Idempotency-Key until accepted (or the deadline): what a real POS does when the gateway is
    slow or refuses."""

    url: str
    printers: tuple[str, ...]
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, loops: int = 3, every: float = 0.15, limit: int = 3000) -> Orders:
        for w in range(loops):
            t = threading.Thread(target=self._loop, args=(w, every, limit // loops), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, worker: int, every: float, limit: int) -> None:
        with httpx.Client(timeout=5) as client:
            for i in range(limit):
                if self._stop.is_set():
                    return
                key = f"order-{worker}-{i}"
                job = self._until_accepted(client, key, self.printers[i % len(self.printers)])
                if job is not None:
                    with self._lock:
                        self.accepted.append(job)
                time.sleep(every)

    def _until_accepted(self, client: httpx.Client, key: str, printer: str) -> str | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = client.post(
                    self.url + "/api/v1/jobs",
                    headers={"Authorization": f"Bearer {SVC}", "Idempotency-Key": key},
                    json={"printer_id": printer, "payload": {"order": key}},
                )
                if r.status_code == 202:
                    return str(r.json()["job_id"])
                with self._lock:
                    self.refused += 1
            except httpx.HTTPError:
                with self._lock:
                    self.refused += 1
            time.sleep(0.1)
        return None

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.accepted)} orders accepted, wanted {n}")
            time.sleep(0.02)

    def stop(self) -> list[str]:
        self._stop.set()
        for t in self._threads:
            t.join(70)
        with self._lock:
            return list(self.accepted)


def wait_finished(url: str, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Wait until none of these jobs is live any more (or the timeout), then their states."""
    deadline = time.monotonic() + timeout
    wanted = set(job_ids)
    headers = {"Authorization": f"Bearer {SVC}"}
    with httpx.Client(timeout=5, headers=headers) as client:
        while time.monotonic() < deadline:
            try:
                live = {
                    j["job_id"]
                    for state in ("queued", "dispatched", "acked")
                    for j in client.get(f"{url}/api/v1/jobs?state={state}&limit=1000").json()["jobs"]
                }
            except (httpx.HTTPError, KeyError, ValueError):
                live = wanted
            if not live & wanted:
                break
            time.sleep(0.3)
        states: dict[str, str] = {}
        for j in job_ids:
            try:
                states[j] = client.get(f"{url}/api/v1/jobs/{j}").json()["state"]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
    return states


def assert_exactly_once(url: str, accepted: list[str], agent_dirs: list[Path], timeout: float = 60) -> None:
    """The question every drill ends with: was any accepted job lost or printed twice?"""
    assert accepted, "no order was accepted: the drill proved nothing"
    assert len(set(accepted)) == len(accepted), "an Idempotency-Key produced two jobs"
    states = wait_finished(url, accepted, timeout)
    unfinished = {j: states.get(j) for j in accepted if states.get(j) != "printed"}
    report = compare(accepted, read_print_log(agent_dirs).job_ids)
    assert report.ok and not unfinished, {"report": report.to_json(), "not printed": unfinished}
    assert report.printed == len(accepted)


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll a condition another process changes; seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def routes_websocket_to(url: str, instance: str) -> bool:
    """Does the front send a new WebSocket to `instance`? (A dashboard connection opened and
    closed; nginx skips a server that failed for its fail_timeout, 10 s.)"""
    from websockets.sync.client import connect

    with connect(f"{url.replace('http', 'ws', 1)}/printing-ws?token={token('dashboard', sub='probe')}") as ws:
        return bool(json.loads(ws.recv(timeout=5))["data"]["instance"] == instance)
