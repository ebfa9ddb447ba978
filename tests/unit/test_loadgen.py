"""The load generator's pure parts: how the load splits, what a simulated agent answers (its
journal), what a POS retries, how worker results merge into the report, how thresholds judge it,
and the bytes it puts on the wire."""

from __future__ import annotations

import orjson
import pytest

from printctl.agent import Action
from printctl.checker import compare
from printctl.loadgen import stats
from printctl.loadgen.frames import OP_TEXT, Deflate, encode_frame, parse_extensions, parse_frames
from printctl.loadgen.http import HttpAnswer, HttpFramingError, parse_response
from printctl.loadgen.plan import (
    LoadPlan,
    agent_company,
    branch_id,
    dashboards_by_company,
    job_due,
    job_printer,
    open_at,
    share,
    watched,
)
from printctl.loadgen.report import BATCH_ENVELOPE, Thresholds, build, evaluate, wire_saving
from printctl.loadgen.sim import RETRY_MAX_DELAY, SimAgent, Verdict, submit_verdict

# ---------------------------------------------------------------- the load split


@pytest.mark.parametrize(
    ("agents", "dashboards", "workers"), [(50, 5, 1), (50, 5, 3), (7, 0, 4), (1000, 13, 8)]
)
def test_agents_and_dashboards_split_into_disjoint_ranges_covering_all(
    agents: int, dashboards: int, workers: int
) -> None:
    plan = LoadPlan(agents=agents, dashboards=dashboards, companies=1, workers=workers)
    shares = [share(plan, w) for w in range(workers)]
    assert [a for s in shares for a in s.agents] == list(range(agents))
    assert [d for s in shares for d in s.dashboards] == list(range(dashboards))
    assert max(len(s.agents) for s in shares) - min(len(s.agents) for s in shares) <= 1


def test_jobs_split_over_workers_form_one_evenly_spaced_stream_over_every_printer() -> None:
    plan = LoadPlan(agents=6, printers_per_agent=2, companies=3, job_rate=10.0, workers=3)
    t1 = 1000.0
    per_worker = [list(range(w, 60, plan.workers)) for w in range(plan.workers)]  # worker w: n = w mod W
    merged = sorted(n for jobs in per_worker for n in jobs)
    assert merged == list(range(60))
    assert [job_due(plan, t1, n) for n in merged[:3]] == [1000.0, 1000.1, 1000.2]
    printers = [job_printer(plan, n) for n in range(plan.printers)]
    assert sorted(printers) == [(a, k) for a in range(6) for k in range(2)]  # each printer once per round
    assert {agent_company(plan, a) for a, _ in printers} == {0, 1, 2}  # every company gets jobs


def test_connections_open_evenly_over_the_ramp_dashboards_first() -> None:
    plan = LoadPlan(agents=3, dashboards=1, companies=1, ramp=4.0)
    assert open_at(plan, 100.0, "dashboard", 0) == 100.0
    assert [open_at(plan, 100.0, "agent", a) for a in range(3)] == [101.0, 102.0, 103.0]


def test_each_company_is_timed_by_its_first_dashboard_when_it_has_one() -> None:
    plan = LoadPlan(agents=10, dashboards=5, companies=3)
    assert dashboards_by_company(plan) == {0: 2, 1: 2, 2: 1}
    assert [watched(plan, c) for c in range(3)] == [True, True, True]
    assert not watched(LoadPlan(agents=10, dashboards=2, companies=3), 2)


def test_an_agents_branch_is_its_own_whatever_the_runs_shape() -> None:
    """A load test with --companies 30 then a failover test with 10 on one database: printer
    lt-30-p0 of loadtest-0 must come back from the branch that registered it, or printd refuses
    every status of it as another branch's printer (13,400 `forbidden` in a 100-round run when
    the branch followed the number of companies). The mapping is the old one of the default
    shape (10 companies), so databases of earlier default runs stay valid."""
    ten = LoadPlan(agents=300, companies=10)
    assert [branch_id(a) for a in range(300)] == [f"b{(a // ten.companies) % 4}" for a in range(300)]
    for companies in (1, 3, 10, 30):
        plan = LoadPlan(agents=300, companies=companies)
        for c in range(companies):  # each company's agents still spread over branches
            branches = {branch_id(a) for a in range(300) if agent_company(plan, a) == c}
            assert len(branches) >= min(4, 300 // companies // 10), (companies, c, branches)


def test_plan_problems_name_the_options() -> None:
    assert LoadPlan().problems() == []
    problems = LoadPlan(agents=0, companies=2, duration=0, workers=0).problems()
    assert any(p.startswith("--agents") for p in problems)
    assert any(p.startswith("--duration") for p in problems)
    assert any(p.startswith("--workers") for p in problems)
    assert LoadPlan(agents=3, companies=4).problems() == [
        "--companies must be 1 to --agents (every company needs an agent)"
    ]


# ---------------------------------------------------------------- the simulated agent's journal


def dispatch(job_id: str, printer: str = "lt-0-p0", run: str = "run1", attempt: int = 1) -> dict[str, object]:
    return {
        "job_id": job_id,
        "correlation_id": f"c-{job_id}",
        "printer_id": printer,
        "kind": "print",
        "payload": {"text": "x", "lt": {"run": run, "n": 1, "t": 99.5}},
        "attempt": attempt,
    }


def events(frames: tuple[bytes, ...]) -> list[tuple[str, dict[str, object]]]:
    return [(m["event"], m["data"]) for m in map(orjson.loads, frames)]


def test_a_new_job_is_acked_printed_once_and_answered_with_the_run_timestamp() -> None:
    agent = SimAgent(0, 0, "lt-agent-0", ("lt-0-p0", "lt-0-p1"), "run1")
    reply = agent.dispatch(dispatch("j1"), now=100.0)
    assert reply.action is Action.PRINT and reply.ours
    assert reply.printed is not None and reply.printed["job_id"] == "j1"
    (ack, ack_data), (result, data) = events(reply.frames)
    assert (ack, result) == ("job.ack", "job.result")
    assert data["success"] is True and data["lt"] == {"run": "run1", "n": 1, "t": 99.5}


def test_a_redelivered_job_is_answered_from_the_journal_never_printed_twice() -> None:
    agent = SimAgent(0, 0, "lt-agent-0", ("lt-0-p0",), "run1")
    first = agent.dispatch(dispatch("j1"), now=100.0)
    again = agent.dispatch(dispatch("j1", attempt=2), now=130.0)
    assert again.action is Action.REPLAY
    assert again.printed is None
    assert events(again.frames)[1] == events(first.frames)[1]  # the stored result, as it was
    prints = [r.printed["job_id"] for r in (first, again) if r.printed]
    assert compare(["j1"], prints).ok


def test_a_job_for_a_printer_the_agent_does_not_drive_is_refused_not_printed() -> None:
    agent = SimAgent(0, 0, "lt-agent-0", ("lt-0-p0",), "run1")
    reply = agent.dispatch(dispatch("j1", printer="elsewhere"), now=1.0)
    assert reply.printed is None
    assert events(reply.frames)[1][1]["success"] is False
    assert agent.dispatch(dispatch("j1", printer="elsewhere"), now=2.0).action is Action.REPLAY


def test_jobs_of_another_run_print_but_are_not_this_runs_and_malformed_ones_are_ignored() -> None:
    agent = SimAgent(0, 0, "lt-agent-0", ("lt-0-p0",), "run2")
    reply = agent.dispatch(dispatch("old", run="run1"), now=1.0)
    assert reply.printed is not None and not reply.ours
    assert agent.dispatch({"printer_id": "lt-0-p0"}, now=1.0).action is None


# ---------------------------------------------------------------- the POS


def answer(status: int, **headers: str) -> HttpAnswer:
    return HttpAnswer(status, {k.replace("_", "-"): v for k, v in headers.items()}, b"{}")


def test_the_pos_retries_lost_answers_and_503_honouring_retry_after_and_gives_up_on_4xx() -> None:
    assert submit_verdict(answer(202), "")[0] is Verdict.ACCEPTED
    assert submit_verdict(None, "timeout") == (Verdict.RETRY, 0.5, "submit: timeout")
    assert submit_verdict(answer(503, retry_after="2"), "") == (Verdict.RETRY, 2.0, "submit: http 503")
    assert submit_verdict(answer(503, retry_after="42"), "")[1] == RETRY_MAX_DELAY
    assert submit_verdict(answer(502), "")[0] is Verdict.RETRY
    assert submit_verdict(answer(404), "") == (Verdict.REJECTED, 0.0, "submit: http 404")


def test_http_answers_are_read_whole_one_at_a_time() -> None:
    buf = bytearray(b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\nRetry-After: 3\r\n\r\nab")
    assert parse_response(buf) is None
    buf += b"cdHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    first = parse_response(buf)
    assert first is not None and (first.status, first.body, first.retry_after()) == (202, b"abcd", 3.0)
    second = parse_response(buf)
    assert second is not None and second.status == 200 and buf == bytearray()
    with pytest.raises(HttpFramingError):
        parse_response(bytearray(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
    with pytest.raises(HttpFramingError):
        parse_response(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"))


# ---------------------------------------------------------------- the wire


def server_frame(payload: bytes) -> bytes:
    """An unmasked text frame, as printd sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def test_client_frames_are_masked_with_a_zero_key_and_server_frames_are_read_whole() -> None:
    assert encode_frame(b"hi") == b"\x81\x82\x00\x00\x00\x00hi"
    assert encode_frame(b"x" * 300)[:4] == b"\x81\xfe\x01\x2c"
    big = b"b" * 70000
    wire = server_frame(b"hi") + server_frame(b"m" * 300) + server_frame(big)
    buf = bytearray(wire[:-10])
    assert parse_frames(buf) == [(0x81, b"hi"), (0x81, b"m" * 300)]
    buf += wire[-10:]
    assert parse_frames(buf) == [(0x80 | OP_TEXT, big)] and buf == bytearray()


def test_deflate_as_printd_negotiates_it() -> None:
    params = parse_extensions("permessage-deflate; server_no_context_takeover; client_max_window_bits=10")
    assert params == {"server_no_context_takeover": None, "client_max_window_bits": "10"}
    deflate = Deflate(params)
    message = orjson.dumps(
        {"event": "printer.status.batch", "data": {"printers": [{"status": "online"}] * 200}}
    )
    assert deflate.inflate(deflate.compress(message)) == message
    assert len(deflate.compress(message)) < len(message) // 10
    assert parse_extensions("x-other") is None


# ---------------------------------------------------------------- the report


def worker_result(worker: int, job_rt_ms: list[float], **extra: object) -> dict[str, object]:
    return {
        "phase": "result",
        "worker": worker,
        "window_s": 10.0,
        "cpu_s": 3.0,
        "window_cpu_s": 9.5 if worker == 1 else 2.0,
        "hist": {
            "connect": stats.encode(stats.histogram([0.002])),
            "job_round_trip": stats.encode(stats.histogram(v / 1000 for v in job_rt_ms)),
            "job_accept": "",
            "status": "",
        },
        "bytes": {
            "agent": {
                "wire_tx": 1000,
                "app_tx": 1000,
                "wire_rx": 10,
                "app_rx": 10,
                "msgs_tx": 10,
                "msgs_rx": 1,
            },
            "dashboard": {
                "wire_tx": 0,
                "app_tx": 0,
                "wire_rx": 400,
                "app_rx": 1000,
                "msgs_tx": 0,
                "msgs_rx": 9,
            },
            "http": {"wire_tx": 50, "app_tx": 20, "wire_rx": 50, "app_rx": 20, "msgs_tx": 5, "msgs_rx": 5},
        },
        "window": {
            "statuses": 100,
            "status_items": 40,
            "status_batches": 4,
            "batch_bytes": 1000,
            "accepted": 5,
        },
        "totals": {"submitted": 5, "accepted": 5, "printed": 5, "completed": 5, "handshakes": 3},
        "sent_by_company": {"0": 50, "1": 50},
        "hellos_by_instance": {"printd-1": 2, "printd-2": 1},
        "open_by_instance": {"printd-1": 2, "printd-2": 1},
        "errors": {"agent: lost close 1001": 1},
        **extra,
    }


def test_worker_results_merge_into_one_report_with_exact_percentiles() -> None:
    plan = LoadPlan(agents=4, dashboards=1, companies=2, workers=3)
    results = [
        worker_result(0, [1.0] * 99),
        worker_result(1, [100.0]),
        {"phase": "result", "error": "worker 2 exited"},
    ]
    report = build(plan, results, compare(["j1"], ["j1"]), url="http://127.0.0.1:1", run_id="r")
    rt = report["latency"]["job_round_trip"]
    assert rt["n"] == 100 and rt["p50_ms"] == pytest.approx(1.0, rel=0.01)
    assert rt["max_ms"] == pytest.approx(100.0, rel=0.01)
    assert report["latency"]["status"] == {"n": 0}
    assert report["jobs"]["accepted"] == 10
    assert report["connections"]["open_by_instance"] == {"printd-1": 4, "printd-2": 2}
    assert report["errors"] == {"agent: lost close 1001": 2, "worker: worker 2 exited": 1}
    assert report["errors_total"] == 3
    assert report["throughput"]["jobs_accepted_per_s"] == 1.0
    assert [w["saturated"] for w in report["generator"]["workers"]] == [False, True]
    assert report["generator"]["saturated"] is True


def test_bytes_saved_compare_with_one_uncompressed_message_per_update() -> None:
    plan = LoadPlan(agents=4, dashboards=1, companies=2)  # company 0 has one dashboard, company 1 none
    window = {"status_items": 10, "status_batches": 2, "batch_bytes": 2000}
    saving = wire_saving(plan, {"wire_rx": 500, "app_rx": 2000}, window, {"0": 40, "1": 40})
    assert saving["updates_for_dashboards"] == 40
    item = (2000 - 2 * BATCH_ENVELOPE) / 10  # the measured average item
    assert saving["unbatched_bytes"] == round(40 * (item + BATCH_ENVELOPE))
    assert saving["batching_pct"] == round(100 * (1 - 2000 / saving["unbatched_bytes"]), 1)
    assert saving["compression_pct"] == 75.0


# ---------------------------------------------------------------- thresholds


def judged(
    lost: list[str] | None = None, p99: list[float] | None = None, errors: int = 0, **th: object
) -> dict[str, bool]:
    plan = LoadPlan(agents=4, dashboards=1, companies=2, workers=1)
    res = worker_result(0, p99 if p99 is not None else [5.0], errors={"e": errors} if errors else {})
    accepted = ["j1", "j2"]
    printed = [j for j in accepted if j not in (lost or [])]
    report = build(plan, [res], compare(accepted, printed), url="u", run_id="r")
    return {c["name"]: c["ok"] for c in evaluate(report, Thresholds(**th))}  # type: ignore[arg-type]


def test_thresholds_pass_and_fail_like_k6() -> None:
    assert judged(max_p99_job_ms=50.0, max_errors=0) == {
        "exactly once": True,
        "p99 job round trip": True,
        "errors": True,
    }
    assert judged(p99=[80.0], max_p99_job_ms=50.0)["p99 job round trip"] is False
    assert judged(p99=[], max_p99_job_ms=50.0)["p99 job round trip"] is False  # nothing measured is no pass
    assert judged(errors=3, max_errors=2)["errors"] is False
    assert judged(errors=2, max_errors=2)["errors"] is True


def test_a_lost_job_fails_whatever_the_latency() -> None:
    assert judged(lost=["j2"], p99=[0.5], max_p99_job_ms=50.0) == {
        "exactly once": False,
        "p99 job round trip": True,
    }


def test_a_run_that_got_no_job_accepted_proves_nothing() -> None:
    plan = LoadPlan(agents=4, dashboards=1, companies=2, workers=1)
    report = build(plan, [worker_result(0, [])], compare([], []), url="u", run_id="r")
    (check,) = evaluate(report, Thresholds())
    assert check["ok"] is False and check["value"] == "no job was accepted"
