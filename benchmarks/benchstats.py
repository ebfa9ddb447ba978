"""What every harness here shares: the machine's background load over a measurement window, the
median and spread of repeated runs, and the floor batching puts under the fan-out latency.

run.py, cluster_bench.py and jobs_bench.py import this module; nothing here starts a process.

- `cpu_jiffies` / `cpu_busy` / `cpu_softirq` / `cpu_steal`: /proc/stat per core.
- `wait_quiet`: wait for idle cores before a measurement.
- `ForeignCPU`: CPU that processes not ours used over a span (per process, reaped children
  included, so it sees a finished test run's children whole).
- `Background`: one window's background: the load average at its start and end, the busy time
  of the cores that is neither ours nor softirq work (total, and per core when the caller knows
  what of ours ran where), `ForeignCPU`, softirq and steal.
- `spread` / `median`: `median (min–max)` of a figure over runs; `background_cell` the same for
  a table's background column.
- `floor_ms`: the q-quantile of the newest-item latency batching alone causes.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import psutil

CORES = (0, 1)  # the harnesses' server core and client core


# ------------------------------------------------------------------------------------------ /proc/stat


def cpu_jiffies() -> dict[int, list[int]]:
    """Per core: user, nice, system, idle, iowait, irq, softirq, steal (jiffies since boot)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                out[int(parts[0][3:])] = [int(x) for x in parts[1:9]]
    return out


def cpu_steal(t0: dict[int, list[int]], t1: dict[int, list[int]]) -> float:
    """Share of time the hypervisor took from this VM's CPUs (invisible as a process)."""
    steal = sum(t1[c][7] - t0[c][7] for c in t0)
    total = sum(sum(t1[c]) - sum(t0[c]) for c in t0)
    return round(100 * steal / (total or 1), 1)


def cpu_softirq(t0: dict[int, list[int]], t1: dict[int, list[int]], cpu: int) -> float:
    d = [b - a for a, b in zip(t0[cpu], t1[cpu], strict=True)]
    return round(100 * d[6] / (sum(d) or 1), 1)


def cpu_busy(t0: dict[int, list[int]], t1: dict[int, list[int]], cpu: int) -> float:
    """Busy share of one CPU between two /proc/stat samples (user+nice+system+irq+softirq)."""
    d = [b - a for a, b in zip(t0[cpu], t1[cpu], strict=True)]
    total = sum(d) or 1
    return round(100 * (d[0] + d[1] + d[2] + d[5] + d[6]) / total, 1)


# ------------------------------------------------------------------------------------------ background


def wait_quiet(args: Any) -> dict[str, Any]:
    """Wait (up to `args.quiet_wait` s) for a second in which both CPUs are nearly idle (at most
    `args.quiet_busy` % busy): other work on the machine would otherwise be measured too. Returns
    the last sample, recorded with the figure."""
    end = time.time() + args.quiet_wait
    while True:
        j0 = cpu_jiffies()
        time.sleep(1.0)
        j1 = cpu_jiffies()
        busy = {f"cpu{c}": cpu_busy(j0, j1, c) for c in CORES}
        if max(busy.values()) <= args.quiet_busy or time.time() >= end:
            return {"background_busy_pct": busy, "quiet": max(busy.values()) <= args.quiet_busy}
        print(f"waiting for a quiet machine: {busy}", file=sys.stderr, flush=True)


class ForeignCPU:
    """CPU used by processes that are not ours (the given processes and everything under them,
    this process, and the pids in `extra`) over a span: another workload on the machine
    invalidates a figure, so such runs are repeated."""

    def __init__(self, *own: subprocess.Popen[Any] | int, extra: Iterable[int] = ()) -> None:
        self.own_roots = [p if isinstance(p, int) else p.pid for p in own] + [os.getpid()]
        self.extra = set(extra)
        self.t0 = time.time()
        self.snap0 = self._snapshot()

    def _own(self) -> set[int]:
        pids = set(self.own_roots) | self.extra
        for pid in self.own_roots:
            try:
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def _snapshot(self) -> dict[int, float]:
        own = self._own()
        out = {}
        for p in psutil.process_iter():
            if p.pid in own:
                continue
            try:
                t = p.cpu_times()  # with reaped children: short-lived processes show up there
                out[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return out

    def pct(self) -> float:
        snap1 = self._snapshot()
        used = sum(max(0.0, c - self.snap0.get(pid, 0.0)) for pid, c in snap1.items())
        return round(100 * used / max(1e-6, time.time() - self.t0), 1)


def pg_backends(procs: Iterable[psutil.Process], pg_port: int) -> set[int]:
    """The PostgreSQL backends serving `procs` (their CPU is the system's under test, not the
    machine's background): matched by the client ports of the processes' connections to `pg_port`."""
    ports = set()
    for p in procs:
        try:
            ports |= {c.laddr.port for c in p.net_connections("tcp") if c.raddr and c.raddr.port == pg_port}
        except psutil.Error:
            pass
    if not ports:
        return set()
    out = set()
    for p in psutil.process_iter(["name"]):
        if p.info["name"] not in ("postgres", "postmaster"):
            continue
        try:
            if any(c.raddr and c.raddr.port in ports for c in p.net_connections("tcp")):
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes so far (a process gone counts nothing)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def self_cpu_s() -> float:
    """CPU time of this process alone (not its children)."""
    t = os.times()
    return t.user + t.system


class Background:
    """The machine around one measurement window. Create it when the window opens; `end()` when
    it closes, with what of the CPU was ours (in % of one core over the window): `own_pct` in
    total, or `own_by_core` where each of our processes is pinned to a known core.

    `other_busy_pct` is the busy time of the cores (of 100 per core) that is neither ours nor
    softirq work: bounded, and it sees processes too short-lived for `ForeignCPU` to list."""

    def __init__(
        self, *own: subprocess.Popen[Any] | int, extra: Iterable[int] = (), cores: Iterable[int] = CORES
    ) -> None:
        self.cores = tuple(cores)
        self.t0, self.load0, self.j0 = time.time(), os.getloadavg(), cpu_jiffies()
        self.self0 = self_cpu_s()
        self.foreign = ForeignCPU(*own, extra=extra)

    def self_pct(self) -> float:
        """This process's CPU since the window opened, in % of one core."""
        return 100 * (self_cpu_s() - self.self0) / max(1e-6, time.time() - self.t0)

    def end(
        self, own_pct: float | None = None, own_by_core: Mapping[int, float] | None = None
    ) -> dict[str, Any]:
        j1 = cpu_jiffies()
        busy = {c: cpu_busy(self.j0, j1, c) for c in self.cores}
        softirq = {c: cpu_softirq(self.j0, j1, c) for c in self.cores}
        out: dict[str, Any] = {
            "loadavg_start": [round(x, 2) for x in self.load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
        if own_by_core is not None:
            other = {c: max(0.0, busy[c] - softirq[c] - own_by_core.get(c, 0.0)) for c in self.cores}
            out["other_by_core_pct"] = {f"cpu{c}": round(v, 1) for c, v in other.items()}
            own_pct = sum(own_by_core.values())
        if own_pct is not None:
            out["other_busy_pct"] = round(max(0.0, sum(busy.values()) - own_pct - sum(softirq.values())), 1)
        out.update(
            {
                # per process; it includes children other processes reaped over the window, whole,
                # so a finishing test run can push it past 100 per core
                "foreign_cpu_pct": self.foreign.pct(),
                "softirq_pct": round(sum(softirq.values()), 1),
                **{f"cpu{c}_busy_pct": busy[c] for c in self.cores},
                "steal_pct": cpu_steal(self.j0, j1),
            }
        )
        return out


# ------------------------------------------------------------------------------------------ spread


def numbers(values: Iterable[Any]) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def median(values: Iterable[Any]) -> float | None:
    nums = numbers(values)
    return statistics.median(nums) if nums else None


def _num(v: float, nd: int | None) -> str:
    return f"{v:g}" if nd is None else f"{v:,.{nd}f}"


def spread(values: Iterable[Any], nd: int | None = None, brackets: str = "[]") -> str:
    """`median [min–max]` of the numbers among `values` (`–` if none, the number alone if one).
    `nd` decimals (with thousands separators), or `:g` when None; `brackets` "[]" or "()"."""
    nums = numbers(values)
    if not nums:
        return "–"
    med = _num(statistics.median(nums), nd)
    if len(nums) == 1:
        return med
    lo, hi = _num(min(nums), nd), _num(max(nums), nd)
    return f"{med} {brackets[0]}{lo}–{hi}{brackets[1]}"


def background_cell(backgrounds: list[dict[str, Any]], brackets: str = "[]") -> str:
    """A table's background column over runs: the 1-min load average at the window's start and
    the other busy % (per core, `CPU0 / CPU1`, where the records have it)."""
    bgs = [b for b in backgrounds if b]
    loads = [b["loadavg_start"][0] for b in bgs if "loadavg_start" in b]
    text = f"load {spread(loads, brackets=brackets)}"
    if bgs and all("other_by_core_pct" in b for b in bgs):
        cores = sorted(bgs[0]["other_by_core_pct"])
        per = [spread([b["other_by_core_pct"].get(c) for b in bgs], 0, brackets) for c in cores]
        return f"{text}; other % {' / '.join(per)}"
    return f"{text}; other busy % {spread([b.get('other_busy_pct') for b in bgs], brackets=brackets)}"


# ------------------------------------------------------------------------------------------ fan-out floor


def floor_ms(batch_sizes: dict[str, int], period_s: float, q: float) -> float | None:
    """The q-quantile of the newest-item latency that batching alone causes: with n updates
    falling uniformly in a window of `period_s`, the newest is min(U1..Un) * period before the
    tick, P(X > x) = (1 - x/period)^n; mixed over the batches seen."""
    total = sum(batch_sizes.values())
    if not total:
        return None

    def above(x: float) -> float:
        return sum(c * (1 - x / period_s) ** int(n) for n, c in batch_sizes.items()) / total

    lo, hi = 0.0, period_s
    for _ in range(50):
        mid = (lo + hi) / 2
        if above(mid) > 1 - q:
            lo = mid
        else:
            hi = mid
    return round(1000 * lo, 1)
