"""The pure parts of cluster_bench.py: the fan-out floor, who was orphaned, how long jobs waited.

.venv/bin/pytest -q benchmarks/test_cluster_bench.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_bench as cb  # noqa: E402


def test_floor_of_one_item_batches_is_the_window_quantile() -> None:
    # one update in the window: its distance to the tick is uniform over the window
    assert cb.floor_ms({"1": 500}, 0.1, 0.5) == pytest.approx(50.0, abs=0.1)
    assert cb.floor_ms({"1": 500}, 0.1, 0.99) == pytest.approx(99.0, abs=0.1)


def test_floor_of_ten_item_batches_matches_the_closed_form() -> None:
    # P(X > x) = (1 - x/T)^10 = 0.01  ->  x = T (1 - 0.01^(1/10)) = 36.9 ms for T = 100 ms
    assert cb.floor_ms({"10": 100}, 0.1, 0.99) == pytest.approx(36.9, abs=0.1)


def test_floor_without_batches_is_unknown() -> None:
    assert cb.floor_ms({}, 0.1, 0.99) is None


def test_orphans_are_the_agents_on_the_victim_at_the_kill() -> None:
    kill = 100.0
    events = [
        [1, "open", 10.0, "printd-1"],  # on the victim: orphaned, back on printd-2
        [1, "close", 100.02, "lost closed by server"],
        [1, "open", 100.3, "printd-2"],
        [2, "open", 11.0, "printd-2"],  # elsewhere: not an orphan
        [3, "open", 12.0, "printd-1"],  # left the victim before the kill: not an orphan
        [3, "close", 50.0, "lost closed by server"],
        [3, "open", 51.0, "printd-3"],
        [4, "open", 13.0, "printd-1"],  # orphaned, first retry lands on the dead one, never back
        [4, "close", 100.01, "lost closed by server"],
        [4, "close", 100.2, "http 502"],
    ]
    back, noticed, orphans = cb.orphan_times(events, kill, "printd-1")
    assert orphans == 2
    assert back == [pytest.approx(0.3)]
    assert sorted(noticed) == [pytest.approx(0.01), pytest.approx(0.02)]


def test_job_waits_count_the_jobs_accepted_in_the_span() -> None:
    jobs = [
        [1.0, 1.1, 1.2, 1],  # before the span
        [5.0, 5.1, 8.1, 1],  # accepted in it, printed 3 s later
        [6.0, 6.1, None, 2],  # accepted in it, never printed
        [7.0, 0.0, None, 3],  # never accepted
        [8.0, 8.1, 8.05, 1],  # printed before the 202 was read: waited 0
    ]
    out = cb.job_waits(jobs, 5.0, 10.0)
    assert out["accepted"] == 3
    assert out["not_printed"] == 1
    assert out["accept_to_printed"]["n"] == 2
    assert out["accept_to_printed"]["max_ms"] == pytest.approx(3000, rel=0.01)
