"""Latency histograms and the generator's own cost: what every load process reports.

Latencies go into HdrHistograms (1 µs to 10 min, 3 significant digits), which travel between
processes encoded as text and merge exactly, so percentiles over several workers are true
percentiles, not averages of percentiles.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

HIST_MAX_US = 600_000_000
PERCENTILES = (50, 90, 99, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def record(h: HdrHistogram, seconds: float) -> None:
    """One latency in seconds (clamped to the histogram's range: a negative clock skew counts as 1 µs)."""
    h.record_value(min(HIST_MAX_US, max(1, int(seconds * 1e6))))


def histogram(values_s: Iterable[float]) -> HdrHistogram:
    h = new_histogram()
    for v in values_s:
        record(h, v)
    return h


def encode(h: HdrHistogram) -> str:
    return str(h.encode().decode())


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram from the encoded ones of several processes ("" entries are skipped)."""
    h = new_histogram()
    for e in encoded:
        if e:
            h.decode_and_add(e)
    return h


def summarize(h: HdrHistogram) -> dict[str, Any]:
    """n, p50/p90/p99/p99.9, max and mean in milliseconds; just n = 0 when there is no sample."""
    if h.get_total_count() == 0:
        return {"n": 0}
    return {
        "n": h.get_total_count(),
        **{f"p{q}_ms".replace(".", ""): round(h.get_value_at_percentile(q) / 1000, 3) for q in PERCENTILES},
        "max_ms": round(h.get_max_value() / 1000, 3),
        "mean_ms": round(h.get_mean_value() / 1000, 3),
    }


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def raise_nofile(need: int) -> None:
    """Lift the soft fd limit to the hard one; SystemExit when `need` connections cannot fit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if need + 64 > hard:
        raise SystemExit(f"{need} connections need more than the fd hard limit {hard}: use more processes")
