"""printctl failover-test's pure parts: rounds from a seed, the agents' events, what the cluster
shows, the SLOs and the report; the refusals before anything starts."""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import orjson
import psutil
import pytest

from printctl.cluster import LocalCluster, Process
from printctl.faults.board import Board, Event, EventFiles, event_line
from printctl.faults.inject import agent_upgrade, render, template_problem
from printctl.faults.observe import Survey, detected, rebalance_shares, unsettled
from printctl.faults.plan import INSTANCE_FAULTS, Fault, RoundPlan, parse_faults, plan_rounds
from printctl.faults.report import JobsOutcome, RoundResult, Slo, evaluate, percentile, spread, summary
from tests.cli import run

INSTANCES = ["printd-3", "printd-1", "printd-2"]

# ---------------------------------------------------------------- the plan


def test_the_same_seed_gives_the_same_rounds_whatever_the_instances_order() -> None:
    faults = parse_faults("kill,drain,pause,redis,db")
    a = plan_rounds(1, 12, faults, INSTANCES, (1.0, 2.0))
    assert a == plan_rounds(1, 12, faults, sorted(INSTANCES), (1.0, 2.0))
    assert a != plan_rounds(2, 12, faults, INSTANCES, (1.0, 2.0))
    assert [r.number for r in a] == list(range(1, 13))


def test_faults_are_dealt_so_every_kind_comes_once_per_deck() -> None:
    faults = parse_faults("kill,drain,pause,redis,db,agent-cut")
    rounds = plan_rounds(7, 14, faults, INSTANCES, (2.0, 8.0))
    for deck in (rounds[0:6], rounds[6:12]):
        assert sorted(r.fault for r in deck) == sorted(faults)
    for r in rounds:
        assert 2.0 <= r.hold <= 8.0
        if r.fault in INSTANCE_FAULTS:
            assert r.target in INSTANCES
        else:
            assert (
                r.target == {Fault.REDIS: "redis", Fault.DB: "database", Fault.AGENT_CUT: "agents"}[r.fault]
            )


def test_fault_names_are_checked() -> None:
    assert parse_faults(" kill, db ,kill") == (Fault.KILL, Fault.DB)
    with pytest.raises(ValueError, match="unknown fault 'reboot'"):
        parse_faults("kill,reboot")
    with pytest.raises(ValueError, match="no fault given"):
        parse_faults(" , ")


# ---------------------------------------------------------------- the agents' events


def opened(t: float, a: int, i: str) -> Event:
    return Event(t, "open", a, i)


def closed(t: float, a: int, i: str) -> Event:
    return Event(t, "close", a, i, "lost ConnectionResetError")


def test_orphans_and_their_reconnect_times_come_from_the_agents_events() -> None:
    board = Board(agents=4)
    board.feed([opened(1, 0, "i1"), opened(1, 1, "i1"), opened(1, 2, "i2"), opened(1, 3, "i2")])
    assert board.connected() == 4 and board.on("i1") == {0, 1}
    # i1 is killed at t=10: its agents lose their connections and come back on i2 (agent 1 never)
    board.feed([closed(10.1, 0, "i1"), closed(10.2, 1, "i1"), opened(10.6, 0, "i2")])
    board.feed([Event(10.3, "error", detail="agent: lost ConnectionResetError")])
    assert board.connected() == 3 and board.on("i2") == {0, 2, 3}
    back = board.reconnects(10.0, 30.0)
    assert back.times == pytest.approx((0.5,)) and back.never == (1,) and back.orphans == 2
    assert board.errors(10.0, 30.0) == {"agent: lost ConnectionResetError": 1}
    assert board.errors(11.0, 30.0) == {}


def test_after_a_cut_of_the_agents_network_the_clock_starts_at_the_heal() -> None:
    board = Board(agents=1)
    board.feed([opened(1, 0, "i1"), closed(10.0, 0, "i1"), opened(17.5, 0, "i2")])
    assert board.reconnects(10.0, 30.0, shut_until=17.0).times == pytest.approx((0.5,))
    assert board.reconnects(10.0, 30.0).times == pytest.approx((7.5,))


def test_a_reconnect_begun_before_the_round_is_not_an_orphan_of_it() -> None:
    board = Board(agents=1)
    board.feed([closed(5.0, 0, "i1"), opened(10.5, 0, "i2")])
    board.trim(9.0)
    assert board.reconnects(10.0, 30.0).orphans == 0
    assert board.events == [opened(10.5, 0, "i2")]


def test_event_files_are_read_as_whole_lines_only(tmp_path: Path) -> None:
    files = EventFiles(tmp_path)
    line = event_line(closed(10.0, 3, "i1"))
    (tmp_path / "events-w0.jsonl").write_bytes(event_line(opened(1.0, 3, "i1")) + line[:10])
    assert files.read() == [opened(1.0, 3, "i1")]
    with open(tmp_path / "events-w0.jsonl", "ab") as f:
        f.write(line[10:])
    assert files.read() == [closed(10.0, 3, "i1")]
    assert files.read() == []


# ---------------------------------------------------------------- what the cluster shows


def view(
    *members: tuple[str, float, int], leader: str | None = "i1", stale: bool = False
) -> dict[str, object]:
    return {
        "stale": stale,
        "leader": leader,
        "backend": {"available": not stale},
        "members": [
            {"id": i, "started_at": started, "connections": {"agent": agents}, "draining": False}
            for i, started, agents in members
        ],
    }


OK = {"status": "ok", "reasons": [], "circuits_open": []}
BEFORE = view(("i1", 100.0, 10), ("i2", 100.0, 10), ("i3", 100.0, 10))


def survey(
    v: dict[str, object] | None, healths: dict[str, object] | None = None, connected: int = 30
) -> Survey:
    return Survey(healths or {"i1": OK, "i2": OK, "i3": OK}, v, connected)  # type: ignore[arg-type]


def test_an_instance_fault_shows_when_its_membership_entry_is_gone_or_replaced() -> None:
    for fault in INSTANCE_FAULTS:
        assert not detected(fault, "i2", BEFORE, survey(BEFORE))
        gone = view(("i1", 100.0, 15), ("i3", 100.0, 15))
        assert detected(fault, "i2", BEFORE, survey(gone))
        assert not detected(fault, "i2", BEFORE, survey({**gone, "stale": True}))  # not a current view
        restarted = view(("i1", 100.0, 15), ("i2", 130.0, 0), ("i3", 100.0, 15))
        assert detected(fault, "i2", BEFORE, survey(restarted))


def test_redis_database_and_agent_cut_show_their_own_way() -> None:
    assert detected(Fault.REDIS, "redis", BEFORE, survey({**BEFORE, "stale": True}))
    assert not detected(Fault.REDIS, "redis", BEFORE, survey(BEFORE))
    db_down = {"status": "degraded", "reasons": ["database unavailable (store circuit open): ..."]}
    assert detected(Fault.DB, "database", BEFORE, survey(BEFORE, {"i1": OK, "i2": db_down, "i3": None}))
    assert not detected(Fault.DB, "database", BEFORE, survey(BEFORE))
    fewer = view(("i1", 100.0, 10), ("i2", 100.0, 4), ("i3", 100.0, 10))
    assert detected(Fault.AGENT_CUT, "agents", BEFORE, survey(fewer))
    assert not detected(Fault.AGENT_CUT, "agents", BEFORE, survey(BEFORE))


def test_settled_means_healthy_complete_led_and_every_agent_connected() -> None:
    expected = {"i1", "i2", "i3"}
    assert unsettled(expected, 30, survey(BEFORE)) == []
    draining = {"status": "draining", "reasons": ["draining: leaving the cluster"]}
    partial = view(("i1", 100.0, 15), ("i3", 100.0, 14), leader=None)
    assert unsettled(expected, 30, survey(partial, {"i1": OK, "i2": draining, "i3": None}, 29)) == [
        "i2 draining (draining: leaving the cluster)",
        "i3 does not answer",
        "not in membership: i2",
        "no leader",
        "1 of 30 agents not connected",
    ]
    assert unsettled(expected, 30, survey(None)) == ["no instance answers /monitoring/cluster"]
    assert "the cluster view is stale" in unsettled(expected, 30, survey({**BEFORE, "stale": True}))


def test_agents_are_evened_out_only_when_an_instance_holds_too_few() -> None:
    assert rebalance_shares({"i1": 10, "i2": 10, "i3": 10}, 30) == {}
    assert rebalance_shares({"i1": 12, "i2": 6, "i3": 12}, 30) == {}  # at least half its share
    assert rebalance_shares({"i1": 30, "i2": 0, "i3": 30}, 60) == {"i1": 0.333, "i3": 0.333}
    assert rebalance_shares({"i1": 20, "i2": 0, "i3": 10}, 30) == {"i1": 0.5}


# ---------------------------------------------------------------- SLOs and the report


def result(
    fault: Fault, times: tuple[float, ...] = (), never: tuple[int, ...] = (), **kw: object
) -> RoundResult:
    r = RoundResult(RoundPlan(1, fault, "i2", 2.0), applied=True, healed=True, settled=True, detect_s=1.0)
    r.reconnect_times, r.never_back = times, never
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def jobs(**kw: object) -> JobsOutcome:
    base: dict[str, object] = {
        "accepted": 100,
        "printed": 100,
        "lost": {},
        "duplicated": {},
        "unexpected": (),
        "pending": {},
    }
    return JobsOutcome(**{**base, **kw})  # type: ignore[arg-type]


def test_percentiles_are_nearest_rank_and_a_missing_agent_is_infinitely_slow() -> None:
    values = [float(v) for v in range(1, 61)]
    assert percentile(values, 50) == 30.0 and percentile(values, 99) == 60.0 and percentile([], 99) is None
    assert spread([0.2, 0.4], never=1) == {"n": 3, "p50_s": 0.4, "p99_s": None, "max_s": None, "never": 1}
    assert not math.isinf(spread([0.2])["max_s"])


def test_a_run_passes_when_every_slo_held() -> None:
    rounds = [result(Fault.KILL, (0.3, 0.9)), result(Fault.REDIS), result(Fault.AGENT_CUT, (25.0,))]
    checks = evaluate(rounds, 3, jobs(), Slo())
    assert [c["name"] for c in checks] == ["lost", "duplicated", "drained", "reconnect p99", "rounds"]
    assert all(c["ok"] for c in checks), checks
    assert checks[3]["value"] == "0.9 s over 2 orphans, 0 never back"  # agent-cut's 25 s not judged


@pytest.mark.parametrize(
    ("rounds", "outcome", "failing"),
    [
        ([result(Fault.KILL)], jobs(lost={"j1": "expired"}), {"lost"}),
        ([result(Fault.KILL)], jobs(accepted=0, printed=0), {"lost"}),
        ([result(Fault.KILL)], jobs(duplicated={"j1": 2}), {"duplicated"}),
        ([result(Fault.KILL)], jobs(unexpected=("j9",)), {"duplicated"}),
        ([result(Fault.KILL)], jobs(pending={"j1": "queued"}), {"drained"}),
        ([result(Fault.KILL, (0.5, 10.5))], jobs(), {"reconnect p99", "rounds"}),
        ([result(Fault.DRAIN, (0.5,), never=(7,))], jobs(), {"reconnect p99", "rounds"}),
        ([result(Fault.AGENT_CUT, (0.5,), never=(7,))], jobs(), {"rounds"}),
        ([result(Fault.PAUSE, detect_s=None)], jobs(), {"rounds"}),
        ([result(Fault.DB, detect_s=None)], jobs(), set()),  # informational for the database
        ([result(Fault.REDIS, settled=False)], jobs(), {"rounds"}),
        ([result(Fault.DB, healed=False)], jobs(), {"rounds"}),
        ([result(Fault.KILL)] * 2, jobs(), {"rounds"}),  # three planned, two run
    ],
)
def test_each_slo_fails_on_its_own(
    rounds: list[RoundResult], outcome: JobsOutcome, failing: set[str]
) -> None:
    checks = evaluate(rounds, 1 if len(rounds) == 1 else 3, outcome, Slo())
    assert {c["name"] for c in checks if not c["ok"]} == failing


def test_the_summary_adds_up_rounds_by_fault() -> None:
    rounds = [
        result(Fault.KILL, (0.2, 0.4), accepted_during=30, errors={"submit: http 502": 2}),
        result(Fault.KILL, (0.6,), never=(3,), detect_s=6.0, errors={"submit: http 502": 1}),
        result(Fault.DB, accepted_during=5, errors={"submit: http 503": 9}),
    ]
    s = summary(rounds, Slo())
    assert s["rounds"] == 3 and s["passed"] == 2
    assert s["accepted_during_faults"] == 35
    assert s["errors_during_rounds"] == {"submit: http 503": 9, "submit: http 502": 3}
    kill = s["by_fault"]["kill"]
    assert kill["rounds"] == 2 and kill["passed"] == 1 and kill["detect_s"] == {"p50": 1.0, "max": 6.0}
    assert kill["reconnect"] == {"n": 4, "p50_s": 0.4, "p99_s": None, "max_s": None, "never": 1}
    assert s["by_fault"]["db"]["reconnect"]["n"] == 0
    assert result(Fault.KILL, never=(3,)).to_json(Slo())["never_back"] == ["lt-agent-3"]


# ---------------------------------------------------------------- injection helpers


def _token(role: str) -> str:
    claims = base64.urlsafe_b64encode(orjson.dumps({"role": role, "sub": "x"})).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln"


def test_the_agents_network_cut_selects_agents_upgrades_only() -> None:
    def head(path: str, role: str, query: bool = False) -> bytes:
        auth = f"?token={_token(role)}" if query else ""
        header = "" if query else f"Authorization: Bearer {_token(role)}\r\n"
        return f"GET {path}{auth} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{header}\r\n".encode()

    assert agent_upgrade(head("/printing-ws", "agent"))
    assert agent_upgrade(head("/printd/printing-ws", "agent", query=True))
    assert not agent_upgrade(head("/printing-ws", "dashboard"))
    assert not agent_upgrade(
        b"POST /api/v1/jobs HTTP/1.1\r\nAuthorization: Bearer " + _token("agent").encode()
    )
    assert not agent_upgrade(b"GET /printing-ws HTTP/1.1\r\nAuthorization: Bearer not.a-jwt!\r\n\r\n")


def test_command_templates_fill_words_never_a_shell() -> None:
    values = {
        "fault": "kill",
        "target": "printd-2; rm -rf /",
        "host": "10.0.0.12",
        "url": "",
        "signal": "KILL",
    }
    assert render("ssh {host} 'sudo systemctl kill -s {signal} printd@{target}'", values) == [
        "ssh",
        "10.0.0.12",
        "sudo systemctl kill -s KILL printd@printd-2; rm -rf /",
    ]
    assert template_problem("./chaos.sh {fault} {target} {signal}") is None
    assert "unknown placeholder 'instance'" in str(template_problem("./chaos.sh {instance}"))
    assert "No closing quotation" in str(template_problem("./chaos.sh 'x"))
    assert template_problem("") == "an empty command"


# ---------------------------------------------------------------- refusals (exit 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "kill,reboot"], "--faults: unknown fault 'reboot'"),
        (["--hold-min", "5", "--hold-max", "2"], "0 < min <= max"),
        (["--rounds", "0"], "--rounds must be 1-1000"),
        (["--stop-cmd", "true"], "--stop-cmd and --start-cmd go together"),
        (["--stop-cmd", "x {nope}", "--start-cmd", "true"], "unknown placeholder 'nope'"),
        (["--job-rate", "0"], "without jobs there is nothing to check"),
        (["--agents", "0"], "--agents must be at least 1"),
    ],
)
def test_usage_errors_are_refused_before_anything_starts(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = run("failover-test", "--state-dir", str(tmp_path), *args, "--json")
    assert done.exit_code == 2, done.output
    assert message in json.loads(done.stdout)["error"]


def test_a_front_elsewhere_is_refused_without_the_production_flag(tmp_path: Path) -> None:
    args = [
        "--url",
        "http://10.20.30.40:8080",
        "--stop-cmd",
        "true",
        "--start-cmd",
        "true",
        "--secret",
        "s" * 40,
    ]
    done = run("failover-test", *args, "--json")
    assert done.exit_code == 2
    assert "not on this machine" in json.loads(done.stdout)["error"]


def test_without_a_local_cluster_the_fix_is_named(tmp_path: Path) -> None:
    done = run("failover-test", "--state-dir", str(tmp_path), "--json")
    assert done.exit_code == 2
    assert "printctl cluster up --private-redis --db-proxy" in json.loads(done.stdout)["error"]


def test_faults_the_local_cluster_cannot_take_are_refused_with_the_fix(tmp_path: Path) -> None:
    me = psutil.Process()  # stands in for running processes: alive, never signalled here
    processes = tuple(
        Process(name, kind, os.getpid(), me.create_time(), "http://127.0.0.1:9", "")
        for name, kind in (("printd-1", "printd"), ("printd-2", "printd"), ("nginx", "nginx"))
    )
    LocalCluster(tmp_path, "http://127.0.0.1:9", "p", processes).save()
    args = ["--state-dir", str(tmp_path), "--secret", "s" * 40, "--faults", "kill,redis,db"]
    done = run("failover-test", *args, "--json")
    assert done.exit_code == 2
    error = json.loads(done.stdout)["error"]
    assert "redis: the local cluster has no Redis of its own: start it with `printctl cluster up" in error
    assert "db: the local cluster has no database proxy" in error and "kill" not in error
