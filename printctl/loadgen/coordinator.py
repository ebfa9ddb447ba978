"""The load test's conductor: starts the workers, keeps their clocks in step, decides when the
window starts and when the drain is over, then runs the exactly-once check on their files.

Timeline (epoch seconds, the same for every worker):
  T0            connections start opening, evenly over --ramp; agents announce their printers
  T1            every worker said ready (all its printers registered) or the ramp plus a grace
                period passed: jobs start, the steady window opens
  T2 = T1 + --duration   statuses and new jobs stop; the window closes
  drain         until every accepted job printed and was seen completed, at most --drain s
  stop          workers send their results and exit
The first SIGINT ends the window now and drains; a second one stops at once (the check then
counts what had not printed yet as lost).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from printctl.checker import PrintReport, compare, parse_print_log, read_job_ids, read_print_log
from printctl.loadgen.fleet import READY_GRACE
from printctl.loadgen.plan import LoadPlan
from printctl.loadgen.workers import Workers

START_DELAY = 0.5  # from "go" to T0: every worker has the line by then
STARTUP_TIMEOUT = 120.0  # a worker's import and token minting
RESULT_TIMEOUT = 30.0
TICK = 0.25
COMPLETION_GRACE = 3.0


class RunFailed(Exception):
    """The run could not take place (a worker did not start): nothing was measured."""


@dataclass
class Live:
    """What the live view shows: the sum of the workers' latest progress lines, and rates from
    each worker's last two lines (their own clocks, so a late line does not make a spike)."""

    RATES = ("msgs", "accepted", "completed", "cpu_s")

    phase: str = "starting"
    started: float = field(default_factory=time.time)
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)
    worker_rates: dict[int, dict[str, float]] = field(default_factory=dict)

    def total(self, key: str) -> int:
        return sum(int(w.get(key, 0)) for w in self.workers.values())

    def open(self, kind: str) -> int:
        return sum(int(w.get("open", {}).get(kind, 0)) for w in self.workers.values())

    def rate(self, key: str) -> float:
        return sum(r.get(key, 0.0) for r in self.worker_rates.values())

    @property
    def cpu_pct(self) -> dict[int, float]:
        return {i: 100 * r.get("cpu_s", 0.0) for i, r in self.worker_rates.items()}

    def update(self, worker: int, line: dict[str, Any]) -> None:
        before = self.workers.get(worker)
        self.workers[worker] = line
        if before is not None and line.get("t", 0.0) > before.get("t", 0.0):
            dt = line["t"] - before["t"]
            self.worker_rates[worker] = {k: (line.get(k, 0) - before.get(k, 0)) / dt for k in self.RATES}


@dataclass
class Outcome:
    results: list[dict[str, Any]]
    check: PrintReport
    earlier_runs: int
    interrupted: bool


class Conductor:
    def __init__(
        self,
        plan: LoadPlan,
        url: str,
        secret: str,
        run_id: str,
        out_dir: Path,
        on_progress: Callable[[Live], None],
        worker_module: str = "printctl.loadgen.worker",
    ) -> None:
        """`worker_module` is run as each worker process (`python -m`): printctl.faults.worker
        is the same fleet writing what the failover test measures."""
        self.plan = plan
        self.worker_module = worker_module
        self.url = url
        self.secret = secret
        self.run_id = run_id
        self.out_dir = out_dir
        self.on_progress = on_progress
        self.live = Live()
        self.interrupts = 0
        self.ready: set[int] = set()
        self._all_printed_at: float | None = None

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1

    def run(self) -> Outcome:
        previous = signal.signal(signal.SIGINT, self._interrupt)
        cmd = [sys.executable, "-m", self.worker_module]
        workers = Workers([cmd] * self.plan.workers)
        try:
            return self._run(workers)
        finally:
            workers.stop()
            signal.signal(signal.SIGINT, previous)

    def _run(self, workers: Workers) -> Outcome:
        plan = self.plan
        for i in range(plan.workers):
            spec = {
                "plan": plan.to_json(),
                "worker": i,
                "url": self.url,
                "secret": self.secret,
                "run_id": self.run_id,
                "out_dir": str(self.out_dir),
            }
            workers.send(orjson.dumps(spec).decode(), only=i)
        prepared = workers.collect("prepared", STARTUP_TIMEOUT + plan.agents / 1000)
        failed = [r["error"] for r in prepared if "error" in r]
        if failed:
            raise RunFailed(f"load workers did not start: {'; '.join(failed)}")
        t0 = time.time() + START_DELAY
        workers.send(f"go {t0}")
        self.live.phase = "ramp"
        ramp_end = t0 + plan.ramp + READY_GRACE
        self._follow(
            workers, lambda now: len(self.ready) == plan.workers or now >= ramp_end or self.interrupts > 0
        )
        t1 = max(time.time() + 0.1, t0 + plan.ramp)
        t2 = t1 + plan.duration
        if self.interrupts == 0:
            workers.send(f"jobs {t1} {t2}")
            self.live.phase = "steady"
            self._follow(workers, lambda now: now >= t2 or self.interrupts > 0)
            if time.time() < t2:  # interrupted: end the window now, then drain
                t2 = max(t1, time.time())
                workers.send(f"jobs {t1} {t2}")
            self.live.phase = "drain"
            drain_end = max(time.time(), t2) + plan.drain
            self._follow(workers, lambda now: now >= drain_end or self.interrupts > 1 or self._drained(t2))
        self.live.phase = "stopping"
        workers.send("stop")
        results = workers.collect("result", RESULT_TIMEOUT)
        accepted, printed, earlier = self._files()
        log = read_print_log(printed)
        check = compare([j for p in accepted for j in read_job_ids(p)], log.job_ids, torn=log.torn)
        earlier_runs = sum(len(parse_print_log(p.read_bytes()).job_ids) for p in earlier)
        return Outcome(results, check, earlier_runs, self.interrupts > 0)

    def _follow(self, workers: Workers, done: Callable[[float], bool]) -> None:
        """Read progress lines (and note who is ready) until `done(now)`."""
        next_tick = time.time()
        while True:
            now = time.time()
            if done(now):
                return
            for i, line in workers.poll(min(TICK, max(0.0, next_tick - now))):
                if line.get("phase") == "progress":
                    self.live.update(i, line)
                elif line.get("phase") == "ready":
                    self.ready.add(i)
            if all(workers.eof):
                raise RunFailed("every load worker exited")
            if time.time() >= next_tick:
                next_tick = time.time() + TICK
                self.on_progress(self.live)

    def _drained(self, t2: float) -> bool:
        """Every worker reported after the window, nothing waits for an answer, every accepted job
        printed, and its completion was seen (or COMPLETION_GRACE passed since the last print: a
        dashboard that was reconnecting when a job completed never sees that event)."""
        lines = self.live.workers.values()
        if len(lines) < self.plan.workers or any(w.get("t", 0) < t2 for w in lines):
            return False
        accepted = self.live.total("accepted")
        if self.live.total("pending") or self.live.total("printed") < accepted:
            self._all_printed_at = None
            return False
        if self.live.total("completed") >= accepted:
            return True
        now = time.time()
        if self._all_printed_at is None:
            self._all_printed_at = now
        return now - self._all_printed_at >= COMPLETION_GRACE

    def _files(self) -> tuple[list[Path], list[Path], list[Path]]:
        """Each worker's files (by name, so a worker that died still counts with what it wrote)."""
        found = {
            name: sorted(p for p in self.out_dir.glob(f"{name}-w*.jsonl") if p.is_file())
            for name in ("accepted", "prints", "earlier-runs")
        }
        return found["accepted"], found["prints"], found["earlier-runs"]
