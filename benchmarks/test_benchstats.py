"""The shared parts of the harnesses (benchstats.py) and run.py's tables over runs.

.venv/bin/pytest -q benchmarks/test_benchstats.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstats as bs  # noqa: E402
import cluster_bench as cb  # noqa: E402
import run  # noqa: E402


def test_one_module_serves_every_harness() -> None:
    assert cb.floor_ms is bs.floor_ms and run.floor_ms is bs.floor_ms
    assert cb.spread is bs.spread and run.spread is bs.spread
    assert cb.Background is bs.Background and run.Background is bs.Background
    assert run.wait_quiet is bs.wait_quiet


def test_spread_is_the_median_and_the_range() -> None:
    assert bs.spread([3.0, 1.0, 2.0]) == "2 [1–3]"
    assert bs.spread([10.0, 40.0, 20.0, 30.0]) == "25 [10–40]"  # even count: mean of the middle two
    assert bs.spread([1234.5, 1000.0, 2000.0], 0, "()") == "1,234 (1,000–2,000)"
    assert bs.spread([2.345], 2) == "2.35"  # one run: the figure alone


def test_spread_leaves_out_what_is_not_a_figure() -> None:
    assert bs.spread([None, "x", True, 4.0, 6.0]) == "5 [4–6]"
    assert bs.spread([None, None]) == "–"
    assert bs.median([None, 1, 2, 9]) == 2
    assert bs.median([]) is None


def test_background_cell_per_core_and_in_total() -> None:
    per_core = [
        {"loadavg_start": [0.5, 0, 0], "other_by_core_pct": {"cpu0": 1.0, "cpu1": 3.0}},
        {"loadavg_start": [0.7, 0, 0], "other_by_core_pct": {"cpu0": 2.0, "cpu1": 5.0}},
        {"loadavg_start": [0.6, 0, 0], "other_by_core_pct": {"cpu0": 0.0, "cpu1": 4.0}},
    ]
    assert bs.background_cell(per_core, "()") == "load 0.6 (0.5–0.7); other % 1 (0–2) / 4 (3–5)"
    total = [{"loadavg_start": [1.0, 0, 0], "other_busy_pct": 2.5}, {}]
    assert bs.background_cell(total) == "load 1; other busy % 2.5"


def test_background_other_is_what_is_not_ours_nor_softirq() -> None:
    bg = bs.Background()
    t = time.process_time() + 0.05
    while time.process_time() < t:  # some busy time of ours in the window
        pass
    everything_ours = bg.end(own_by_core={0: 100.0, 1: 100.0})
    assert everything_ours["other_by_core_pct"] == {"cpu0": 0.0, "cpu1": 0.0}  # never below zero
    assert everything_ours["other_busy_pct"] == 0.0
    nothing_ours = bs.Background()
    t = time.process_time() + 0.05
    while time.process_time() < t:
        pass
    out = nothing_ours.end(own_by_core={0: 0.0, 1: 0.0})
    busy = out["cpu0_busy_pct"] + out["cpu1_busy_pct"]
    assert busy > 0  # we were busy ourselves
    assert out["other_busy_pct"] == pytest.approx(busy - out["softirq_pct"], abs=0.2)
    assert len(out["loadavg_start"]) == 3 and len(out["loadavg_end"]) == 3


@pytest.fixture
def stranger() -> Any:
    """A busy process that is not ours: its parent exits at once, so it is no child of this one."""
    code = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass\ntime.sleep(30)\n"
    out = subprocess.run(
        ["sh", "-c", f'{sys.executable} -c "{code}" >/dev/null 2>&1 & echo $!'],
        capture_output=True,
        text=True,
        check=True,
    )
    proc = psutil.Process(int(out.stdout.strip()))
    yield proc
    proc.kill()


def test_foreign_cpu_counts_a_process_that_is_not_ours(stranger: psutil.Process) -> None:
    assert stranger.pid not in {c.pid for c in psutil.Process(os.getpid()).children(recursive=True)}
    foreign = bs.ForeignCPU()
    t0 = time.time()
    deadline = t0 + 10
    while stranger.cpu_times().user + stranger.cpu_times().system < 0.3 and time.time() < deadline:
        time.sleep(0.01)
    burnt = stranger.cpu_times().user + stranger.cpu_times().system
    assert burnt >= 0.25
    # its CPU since the snapshot, over at most the span pct() measures
    assert foreign.pct() >= 100 * (burnt - foreign.snap0[stranger.pid]) / (time.time() - t0) * 0.9
    mine = bs.ForeignCPU(stranger.pid)  # the same process named as ours is not foreign
    assert stranger.pid not in mine.snap0


def test_floor_of_ten_item_batches() -> None:
    assert bs.floor_ms({"10": 100}, 0.1, 0.99) == pytest.approx(36.9, abs=0.1)
    assert bs.floor_ms({"1": 50, "10": 50}, 0.1, 0.5) < bs.floor_ms({"1": 100}, 0.1, 0.5)  # type: ignore[operator]


# ------------------------------------------------------------------------------------------ run.py tables


def rtt_rec(impl: str, conns: int, rate: float, p99: float, **kw: Any) -> dict[str, Any]:
    return {
        "exp": "rtt",
        "impl": impl,
        "conns": conns,
        "round_trips_per_s": rate,
        "rtt": {"p50_ms": 1.0, "p99_ms": p99},
        "server_cpu_pct": 99.0,
        "client_cpu_pct": 40.0,
        "cpu1_busy_pct": 45.0,
        "background": {"loadavg_start": [0.2, 0, 0], "other_by_core_pct": {"cpu0": 0.0, "cpu1": 1.0}},
        **kw,
    }


def test_rtt_table_gives_median_and_spread_per_impl_and_level() -> None:
    recs = [
        rtt_rec("printd", 100, 30000.0, 4.0, run=0),
        rtt_rec("printd", 100, 36000.0, 5.0, run=1),
        rtt_rec("printd", 100, 33000.0, 9.0, run=2),
        rtt_rec("printd", 1000, 20000.0, 40.0, run=0),
        {"exp": "rtt", "impl": "printd", "conns": 1000, "run": 1, "error": "server died"},
    ]
    rows = [line for line in run.md_rtt(recs).splitlines() if line.startswith("| printd")]
    assert len(rows) == 2
    assert "| 3/3 | 33,000 (30,000–36,000) |" in rows[0]
    assert "| 5.00 (4.00–9.00) |" in rows[0]
    assert "load 0.2 (0.2–0.2); other % 0 (0–0) / 1 (1–1)" in rows[0]
    assert "| 1/2 | 20,000 |" in rows[1] and "server died" in rows[1]


def test_wire_saving_is_taken_per_run_against_the_same_run() -> None:
    def wire(variant: str, run_: int, tx: float, rx: float) -> dict[str, Any]:
        return {
            "exp": "wire",
            "impl": "printd",
            "variant": variant,
            "run": run_,
            "wire_tx_KBps": tx,
            "wire_rx_KBps": rx,
        }

    recs = [
        wire("deflate+batching", 0, 50.0, 50.0),
        wire("neither", 0, 200.0, 200.0),  # saved 75 %
        wire("deflate+batching", 1, 60.0, 60.0),
        wire("neither", 1, 100.0, 100.0),  # saved 40 %
    ]
    row = next(line for line in run.md_wire(recs).splitlines() if "deflate+batching" in line)
    assert "| 57.5 (40.0–75.0) |" in row  # saved in total, median of the two runs


def test_fanout_table_shows_the_floor_and_the_server_added_latency() -> None:
    rec = {
        "exp": "fanout",
        "impl": "printd",
        "agents": 5000,
        "latency_newest": {"p50_ms": 7.0, "p99_ms": 41.0},
        "floor_newest": {"p50_ms": 6.5, "p99_ms": 36.9},
        "latency_server_added": {"p50_ms": 0.8, "p99_ms": 3.25},
    }
    out = run.md_fanout([rec])
    head, _, row = out.splitlines()[2:5]
    cells = dict(zip(head.split(" | "), row.split(" | "), strict=True))
    assert cells["floor p99 ms"] == "36.9"
    assert cells["server-added p99 ms"] == "3.25"
    assert cells["newest p99 ms"] == "41.0"
