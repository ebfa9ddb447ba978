"""The load test's report: the workers' results merged, the thresholds judged. Pure functions.

Rates and bytes cover the steady window (the longest worker's measured window); latencies cover
the whole run: connect times from the ramp on, job round trips until the drain ended, status
latency inside the window. Percentiles come from merged HdrHistograms, so they are exact over
all workers.

Bytes saved by printd's batching and compression, seen from the dashboards (receive side):
- `unbatched`: what the dashboards would have received with one message per status update
  (every status a watched company's agents sent, times that company's dashboards, each as a
  one-item message of the measured average item size) - an estimate, since the client cannot
  see printd's counterfactual;
- `batched`: the batch messages as received, uncompressed;
- `wire`: everything the dashboards' sockets received, compressed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from printctl.checker import PrintReport
from printctl.loadgen.plan import LoadPlan, dashboards_by_company
from printctl.loadgen.stats import merge, summarize

#: a one-item batch's envelope around the item: {"event":"printer.status.batch","data":{"printers":[...]}}
BATCH_ENVELOPE = len(b'{"event":"printer.status.batch","data":{"printers":[]}}')
SATURATED_PCT = 90.0  # a worker busier than this may be the bottleneck, not printd
HISTOGRAMS = ("connect", "job_round_trip", "job_accept", "status")


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_p99_job_ms: float | None = None
    max_errors: int | None = None


def _sum(dicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _pct(part: float, whole: float) -> float | None:
    return round(100 * (1 - part / whole), 1) if whole > 0 else None


def wire_saving(
    plan: LoadPlan, dashboards: dict[str, int], window: dict[str, int], sent_by_company: dict[str, int]
) -> dict[str, Any]:
    """Bytes the dashboards received against one uncompressed message per update (see the module doc)."""
    items, batches, batched = (
        window.get("status_items", 0),
        window.get("status_batches", 0),
        window.get("batch_bytes", 0),
    )
    watchers = dashboards_by_company(plan)
    updates = sum(n * watchers.get(int(c), 0) for c, n in sent_by_company.items())
    item_size = (batched - batches * BATCH_ENVELOPE) / items if items else 0.0
    unbatched = round(updates * (item_size + BATCH_ENVELOPE))
    wire, app = dashboards.get("wire_rx", 0), dashboards.get("app_rx", 0)
    return {
        "updates_for_dashboards": updates,
        "items_received": items,
        "unbatched_bytes": unbatched,
        "batched_bytes": batched,
        "wire_bytes": wire,
        "batching_pct": _pct(batched, unbatched) if batched else None,
        "compression_pct": _pct(wire, app),
        "total_pct": _pct(wire, app - batched + unbatched) if batched else None,
    }


def build(
    plan: LoadPlan,
    results: list[dict[str, Any]],
    check: PrintReport,
    *,
    url: str,
    run_id: str,
    earlier_runs: int = 0,
    interrupted: bool = False,
) -> dict[str, Any]:
    """One report from every worker's result line (an entry with "error" is a worker that failed)."""
    good = [r for r in results if "error" not in r]
    errors = _sum(r.get("errors", {}) for r in good)
    for r in results:
        if "error" in r:
            errors[f"worker: {r['error']}"] = errors.get(f"worker: {r['error']}", 0) + 1
    window_s = max((r.get("window_s", 0.0) for r in good), default=0.0) or plan.duration
    win = _sum(r.get("window", {}) for r in good)
    totals = _sum(r.get("totals", {}) for r in good)
    by_kind = {
        kind: _sum(r.get("bytes", {}).get(kind, {}) for r in good) for kind in ("agent", "dashboard", "http")
    }
    sent = _sum(r.get("sent_by_company", {}) for r in good)
    latency = {name: summarize(merge(r.get("hist", {}).get(name, "") for r in good)) for name in HISTOGRAMS}
    messages = sum(k.get("msgs_tx", 0) + k.get("msgs_rx", 0) for k in by_kind.values())
    workers = []
    for r in good:
        pct = round(100 * r.get("window_cpu_s", 0.0) / max(1e-6, r.get("window_s", 0.0) or window_s), 1)
        workers.append(
            {
                "worker": r.get("worker"),
                "cpu_s": r.get("cpu_s"),
                "window_cpu_pct": pct,
                "saturated": pct >= SATURATED_PCT,
            }
        )
    return {
        "url": url,
        "run_id": run_id,
        "interrupted": interrupted,
        "plan": plan.to_json(),
        "window_s": round(window_s, 3),
        "latency": latency,
        "throughput": {
            "statuses_sent_per_s": round(win.get("statuses", 0) / window_s, 1),
            "status_items_received_per_s": round(win.get("status_items", 0) / window_s, 1),
            "jobs_submitted_per_s": round(win.get("submitted", 0) / window_s, 1),
            "jobs_accepted_per_s": round(win.get("accepted", 0) / window_s, 1),
            "jobs_completed_per_s": round(win.get("completed", 0) / window_s, 1),
            "messages_per_s": round(messages / window_s, 1),
        },
        "jobs": {
            k: totals.get(k, 0)
            for k in (
                "submitted",
                "accepted",
                "rejected",
                "gave_up",
                "printed",
                "replayed",
                "completed",
                "polled",
            )
        }
        | {"earlier_runs_printed": earlier_runs},
        "connections": {
            "planned": plan.agents + plan.dashboards,
            "handshakes": totals.get("handshakes", 0),
            "reconnects": totals.get("reconnects", 0),
            "refused": sum(r.get("refused", 0) for r in good),
            "deflate_accepted": sum(r.get("deflate_accepted", 0) for r in good),
            "open_by_instance": _sum(r.get("open_by_instance", {}) for r in good),
            "hellos_by_instance": _sum(r.get("hellos_by_instance", {}) for r in good),
        },
        "bytes": {
            **{f"{kind}s": counts for kind, counts in by_kind.items() if kind != "http"},
            "http": by_kind["http"],
            "saving": wire_saving(plan, by_kind["dashboard"], win, sent),
        },
        "errors": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "errors_total": sum(errors.values()),
        "generator": {"workers": workers, "saturated": any(w["saturated"] for w in workers)},
        "exactly_once": check.to_json(),
    }


def evaluate(report: dict[str, Any], thresholds: Thresholds) -> list[dict[str, Any]]:
    """Every check of the run, like k6 thresholds: the exactly-once check always, the others when
    asked for. A run with a job rate that got no job accepted proves nothing and fails the first."""
    once = report["exactly_once"]
    accepted = once["accepted"]
    wanted = report["plan"]["job_rate"] > 0
    value = (
        f"{accepted} accepted, {once['printed']} printed, {len(once['lost'])} lost, "
        f"{len(once['duplicated'])} duplicated, {len(once['unexpected'])} unexpected"
    )
    out = [
        {
            "name": "exactly once",
            "limit": "every accepted job printed once, none lost or doubled",
            "value": value if accepted or not wanted else "no job was accepted",
            "ok": bool(once["ok"]) and (accepted > 0 or not wanted),
        }
    ]
    if thresholds.max_p99_job_ms is not None:
        p99 = report["latency"]["job_round_trip"].get("p99_ms")
        out.append(
            {
                "name": "p99 job round trip",
                "limit": f"<= {thresholds.max_p99_job_ms:g} ms",
                "value": f"{p99:g} ms" if p99 is not None else "no job round trip measured",
                "ok": p99 is not None and p99 <= thresholds.max_p99_job_ms,
            }
        )
    if thresholds.max_errors is not None:
        total = report["errors_total"]
        out.append(
            {
                "name": "errors",
                "limit": f"<= {thresholds.max_errors}",
                "value": str(total),
                "ok": total <= thresholds.max_errors,
            }
        )
    return out
