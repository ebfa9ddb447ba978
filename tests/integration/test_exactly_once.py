"""Fault drills that end with the checker: was any accepted job lost or printed twice?

Real processes only: printd on SQLite or PostgreSQL, `printctl agent` writing to its stand-in
printer (prints.jsonl), a POS loop that retries with the same Idempotency-Key as a real one
would, and `printctl verify-prints` at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from printctl.checker import compare, read_print_log
from tests.conftest import Printd, token

SVC = token("service", "acme", sub="pos-1")


class Agent:
    def __init__(
        self,
        p: Printd,
        out: Path,
        *extra: str,
        sub: str = "agent-1",
        printers: tuple[str, ...] = ("k1", "k2"),
        url: str | None = None,
    ):
        self.p, self.out, self.extra, self.sub, self.printers = p, out, extra, sub, printers
        self.url = url or p.url  # another path to printd (a proxy) if given
        self.log_path = out.parent / f"{sub}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Agent:
        args = [
            sys.executable,
            "-m",
            "printctl.main",
            "agent",
            "--url",
            self.url,
            "--output",
            str(self.out),
            "--json",
        ]
        args += ["--token", token("agent", "acme", sub=self.sub), "--max-backoff", "1"]
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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_printers(p: Printd, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = p.get("/api/v1/printers", SVC)
        if r.status_code == 200 and sum(x["agent_online"] for x in r.json()["printers"]) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"printers not online:\n{p.log()}")


def submit_until_accepted(p: Printd, key: str, printer: str, deadline: float) -> str | None:
    """A POS: retry the same order (same Idempotency-Key) until printd accepts it."""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                p.url + "/api/v1/jobs",
                headers={"Authorization": f"Bearer {SVC}", "Idempotency-Key": key},
                json={"printer_id": printer, "payload": {"order": key}},
                timeout=5,
            )
            if r.status_code == 202:
                return str(r.json()["job_id"])
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def wait_all_finished(p: Printd, job_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        pending = [j for j in job_ids if states.get(j) not in ("printed", "failed", "expired")]
        if not pending:
            return states
        for j in pending:
            try:
                r = p.get(f"/api/v1/jobs/{j}", SVC)
                if r.status_code == 200:
                    states[j] = r.json()["state"]
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    return states


def test_printd_sigkill_mid_stream_loses_and_doubles_nothing(
    printd_factory: Any, backend: dict[str, str], tmp_path: Path
) -> None:
    p: Printd = printd_factory(env=backend)
    agent = Agent(p, tmp_path / "agent-out", "--print-delay", "0.02").start()
    try:
        wait_printers(p, 2)
        accepted: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 60

        def pos(worker: int) -> None:
            for i in range(30):
                job = submit_until_accepted(p, f"order-{worker}-{i}", "k1" if i % 2 else "k2", deadline)
                if job is not None:
                    with lock:
                        accepted.append(job)
                time.sleep(0.01)

        threads = [threading.Thread(target=pos, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        while len(accepted) < 30:
            time.sleep(0.01)
        p.kill()  # SIGKILL mid-stream: jobs queued, dispatched, acked and printing
        time.sleep(0.5)
        p.start()
        for t in threads:
            t.join()
        assert len(accepted) == 90
        states = wait_all_finished(p, accepted, timeout=60)
        assert all(states.get(j) == "printed" for j in accepted), {
            j: states.get(j) for j in accepted if states.get(j) != "printed"
        }
        report = compare(accepted, read_print_log([tmp_path / "agent-out"]).job_ids)
        assert report.ok, report.to_json()
        assert report.printed == 90
    finally:
        agent.stop()


def test_agent_dies_after_printing_before_result_prints_once(printd: Printd, tmp_path: Path) -> None:
    out = tmp_path / "agent-out"
    agent = Agent(printd, out, printers=("k1",)).start("--crash-after-print")
    try:
        wait_printers(printd, 1)
        job = submit_until_accepted(printd, "order-1", "k1", time.monotonic() + 10)
        assert job is not None
        assert agent.proc is not None and agent.proc.wait(15) == 3  # printed, then died
        assert printd.get(f"/api/v1/jobs/{job}", SVC).json()["state"] == "acked"  # no result yet
        agent.start()  # the same agent, same journal, without the crash
        states = wait_all_finished(printd, [job], timeout=20)
        assert states[job] == "printed"
        detail = printd.get(f"/api/v1/jobs/{job}", SVC).json()
        assert detail["attempts"] == 2  # it was redelivered...
        report = compare([job], read_print_log([out]).job_ids)
        assert report.ok and report.printed == 1, report.to_json()  # ...and printed once
        verify = subprocess.run(
            [
                sys.executable,
                "-m",
                "printctl.main",
                "verify-prints",
                "--accepted",
                str(_write_ids(tmp_path, [job])),
                str(out),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert verify.returncode == 0 and '"ok": true' in verify.stdout
    finally:
        agent.stop()


def _write_ids(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "accepted.jsonl"
    path.write_text("".join(f'{{"job_id": "{j}"}}\n' for j in ids))
    return path


def test_checker_reports_lost_and_duplicated() -> None:
    report = compare(["a", "b", "c"], ["a", "a", "c", "z"])
    assert report.lost == ("b",) and report.duplicated == {"a": 2} and report.unexpected == ("z",)
    assert not report.ok
