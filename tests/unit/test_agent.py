from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from printctl import agent as A
from printctl import agent_runtime
from printctl.checker import read_print_log
from printd.auth import mint_token

# -- helpers --------------------------------------------------------------------------------


def job(job_id: str = "j1", printer_id: str = "kitchen-1", **extra: Any) -> A.DispatchedJob:
    return A.DispatchedJob(
        job_id=job_id,
        correlation_id=extra.get("correlation_id", f"c-{job_id}"),
        printer_id=printer_id,
        kind=extra.get("kind", "print"),
        payload=extra.get("payload", {"text": "2x burger"}),
        attempt=extra.get("attempt", 1),
    )


def dispatch_data(j: A.DispatchedJob) -> dict[str, Any]:
    return {
        "job_id": j.job_id,
        "correlation_id": j.correlation_id,
        "printer_id": j.printer_id,
        "kind": j.kind,
        "payload": j.payload,
        "attempt": j.attempt,
    }


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


class FakeClient:
    """Stands in for WsClient: records what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.changed = trio.Event()

    async def send(self, event: str, data: dict[str, Any] | None = None, *, id: int | None = None) -> None:
        self.sent.append((event, data or {}))
        self.changed.set()
        self.changed = trio.Event()

    def events(self, job_id: str) -> list[str]:
        return [e for e, d in self.sent if d.get("job_id") == job_id]

    def results(self, job_id: str) -> list[dict[str, Any]]:
        return [d for e, d in self.sent if e == "job.result" and d.get("job_id") == job_id]


class BrokenClient(FakeClient):
    """A connection that died: every send fails the way a closed socket does."""

    async def send(self, event: str, data: dict[str, Any] | None = None, *, id: int | None = None) -> None:
        await super().send(event, data, id=id)
        raise trio.BrokenResourceError("connection lost")


def make_agent(out: Path, **settings: Any) -> A.Agent:
    s = A.AgentSettings(
        url="http://127.0.0.1:1",
        token="t",
        printers=settings.pop("printers", ("kitchen-1", "bar-1")),
        output=out,
        **settings,
    )
    return A.Agent(s, A.Journal.open(out / A.JOURNAL), A.PrintDevice(out, "agent-7"), A.Reporter(True))


def close_agent(agent: A.Agent) -> None:
    agent.journal.close()
    agent.device.close()


async def wait_for_result(client: FakeClient, job_id: str, n: int = 1) -> None:
    with trio.fail_after(5):
        while len(client.results(job_id)) < n:
            await client.changed.wait()


# -- decide(): the de-duplication rule ---------------------------------------------------------


def test_decide_new_job_prints() -> None:
    assert A.decide(None, in_flight=False) is A.Action.PRINT


def test_decide_done_job_replays_even_if_in_flight() -> None:
    done = A.Entry(A.JournalState.DONE, {"success": True})
    assert A.decide(done, in_flight=False) is A.Action.REPLAY
    assert A.decide(done, in_flight=True) is A.Action.REPLAY


def test_decide_job_queued_or_printing_in_this_process_gets_an_ack_only() -> None:
    assert A.decide(None, in_flight=True) is A.Action.ACK_ONLY
    assert A.decide(A.Entry(A.JournalState.PRINTING), in_flight=True) is A.Action.ACK_ONLY


def test_decide_printing_left_by_an_earlier_run_is_unknown() -> None:
    assert A.decide(A.Entry(A.JournalState.PRINTING), in_flight=False) is A.Action.UNKNOWN


# -- the journal ------------------------------------------------------------------------------


def test_journal_folds_printing_then_done() -> None:
    result = {"job_id": "a", "success": True, "message": "printed"}
    j = A.Journal.from_lines(
        [
            '{"job_id":"a","state":"printing","at":1}',
            orjson.dumps({"job_id": "a", "state": "done", "at": 2, "result": result}),
            '{"job_id":"b","state":"printing","at":3}',
        ]
    )
    assert j.decide("a") is A.Action.REPLAY
    entry = j.get("a")
    assert entry is not None and entry.result == result
    assert j.decide("b") is A.Action.UNKNOWN
    assert j.decide("c") is A.Action.PRINT
    assert j.unresolved() == ["b"]
    assert j.skipped == 0


def test_journal_done_is_final() -> None:
    j = A.Journal.from_lines(
        ['{"job_id":"a","state":"done","result":{"success":false}}', '{"job_id":"a","state":"printing"}']
    )
    assert j.decide("a") is A.Action.REPLAY


def test_journal_skips_torn_and_foreign_lines() -> None:
    j = A.Journal.from_lines(
        [
            '{"job_id":"a","state":"printing"}',
            "",
            '{"job_id":"x","state":"weird"}',
            "[1, 2]",
            '{"state":"done"}',
            '{"job_id":"b","state":"pri',  # a write torn by a crash
        ]
    )
    assert j.skipped == 4
    assert j.decide("a") is A.Action.UNKNOWN
    # a torn `printing` record means the device was never written: the job may print
    assert j.decide("b") is A.Action.PRINT


def test_journal_file_round_trip_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / A.JOURNAL
    j = A.Journal.open(path)
    j.record({"job_id": "a", "state": "printing", "at": 1.0})
    j.record(A.done_record("a", {"job_id": "a", "success": True, "message": "ok"}, 2.0))
    j.record({"job_id": "b", "state": "printing", "at": 3.0})
    j.close()
    again = A.Journal.open(path)
    assert again.decide("a") is A.Action.REPLAY
    assert again.decide("b") is A.Action.UNKNOWN
    again.close()
    assert [r["state"] for r in lines(path)] == ["printing", "done", "printing"]


def test_journal_repairs_a_torn_last_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / A.JOURNAL
    path.write_bytes(b'{"job_id":"a","state":"done","result":{"success":true}}\n{"job_id":"b","sta')
    j = A.Journal.open(path)
    assert j.skipped == 1
    j.record({"job_id": "c", "state": "printing"})
    j.close()
    reloaded = A.Journal.from_lines(path.read_bytes().splitlines())
    assert reloaded.decide("a") is A.Action.REPLAY
    assert reloaded.decide("c") is A.Action.UNKNOWN
    assert reloaded.skipped == 1  # only the torn line, the new record is intact


def test_replay_result_is_the_stored_one() -> None:
    stored = A.make_result(job(), True, "printed on kitchen-1", printed_at=5.0)
    assert A.replay_result(job(), A.Entry(A.JournalState.DONE, stored)) == stored
    damaged = A.replay_result(job(), A.Entry(A.JournalState.DONE, {}))
    assert damaged["job_id"] == "j1" and damaged["success"] is False


# -- the print log and tickets --------------------------------------------------------------


def test_print_record_format() -> None:
    rec = A.print_record(job(payload={"text": "hi"}), "agent-7", 1700000000.5)
    assert rec == {
        "job_id": "j1",
        "correlation_id": "c-j1",
        "printer_id": "kitchen-1",
        "kind": "print",
        "agent_id": "agent-7",
        "printed_at": 1700000000.5,
        "payload": {"text": "hi"},
    }


def test_device_writes_one_line_and_a_ticket_numbered_across_restarts(tmp_path: Path) -> None:
    dev = A.PrintDevice(tmp_path, "agent-7")
    dev.print(job("j1"), 1.0)
    dev.print(job("j2", payload={"lines": ["a", "b"]}), 2.0)
    dev.close()
    dev = A.PrintDevice(tmp_path, "agent-7")
    third = dev.print(job("j/3", printer_id="bar-1", payload={"x": 1}), 3.0)
    fourth = dev.print(job("j4"), 4.0)
    dev.close()
    log = lines(tmp_path / "prints.jsonl")
    assert [r["job_id"] for r in log] == ["j1", "j2", "j/3", "j4"]
    assert read_print_log([tmp_path]).job_ids == ["j1", "j2", "j/3", "j4"]  # what verify-prints reads
    assert sorted(p.name for p in (tmp_path / "kitchen-1").iterdir()) == [
        "000001-j1.txt",
        "000002-j2.txt",
        "000003-j4.txt",
    ]
    assert third.name == "000001-j_3.txt" and fourth.name == "000003-j4.txt"
    text = (tmp_path / "kitchen-1" / "000001-j1.txt").read_text()
    assert "2x burger" in text and "kitchen-1" in text and "#000001" in text
    assert "a\nb" in (tmp_path / "kitchen-1" / "000002-j2.txt").read_text()


# -- small pure pieces ------------------------------------------------------------------------


def test_parse_dispatch() -> None:
    parsed = A.parse_dispatch(dispatch_data(job(attempt=3)))
    assert parsed == job(attempt=3)
    assert isinstance(A.parse_dispatch({"printer_id": "p"}), str)
    assert isinstance(A.parse_dispatch({"job_id": "j"}), str)
    assert isinstance(A.parse_dispatch("nope"), str)
    loose = A.parse_dispatch({"job_id": "j", "printer_id": "p", "attempt": True, "payload": [1]})
    assert isinstance(loose, A.DispatchedJob)
    assert (loose.correlation_id, loose.kind, loose.attempt, loose.payload) == (
        "",
        "print",
        1,
        {"value": [1]},
    )


def test_token_subject_is_read_without_verifying() -> None:
    token = mint_token("x" * 32, role="agent", company="acme", sub="agent-7", branch="b1")
    assert A.token_subject(token) == "agent-7"
    assert A.token_subject("not-a-jwt") == ""
    assert A.token_subject("a.!!!.c") == ""
    assert A.token_subject("a.W10.c") == ""  # payload "[]": not an object
    assert A.token_claims(token)["role"] == "agent"


# -- the agent's answers to dispatches ------------------------------------------------------


async def test_new_job_is_acked_printed_once_and_replayed(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._worker)
        await agent.on_dispatch(client, dispatch_data(job()))  # type: ignore[arg-type]
        assert client.sent[0] == ("job.ack", {"job_id": "j1", "correlation_id": "c-j1"})
        await wait_for_result(client, "j1")
        [result] = client.results("j1")
        assert result["success"] is True and result["correlation_id"] == "c-j1"
        # redelivery of a printed job: ack + the stored result, no second print
        await agent.on_dispatch(client, dispatch_data(job(attempt=2)))  # type: ignore[arg-type]
        assert client.events("j1") == ["job.ack", "job.result", "job.ack", "job.result"]
        assert client.results("j1")[1] == result
        nursery.cancel_scope.cancel()
    close_agent(agent)
    assert read_print_log([tmp_path]).job_ids == ["j1"]
    assert [r["state"] for r in lines(tmp_path / A.JOURNAL)] == ["printing", "done"]

    # after a restart of the agent the journal still answers for it
    restarted = make_agent(tmp_path)
    client2 = FakeClient()
    await restarted.on_dispatch(client2, dispatch_data(job(attempt=3)))  # type: ignore[arg-type]
    assert client2.sent == [("job.ack", {"job_id": "j1", "correlation_id": "c-j1"}), ("job.result", result)]
    close_agent(restarted)
    assert read_print_log([tmp_path]).job_ids == ["j1"]


async def test_duplicate_while_queued_gets_only_an_ack(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    # no worker running: the job stays queued
    await agent.on_dispatch(client, dispatch_data(job()))  # type: ignore[arg-type]
    await agent.on_dispatch(client, dispatch_data(job(attempt=2)))  # type: ignore[arg-type]
    assert client.events("j1") == ["job.ack", "job.ack"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._worker)
        await wait_for_result(client, "j1")
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    close_agent(agent)
    assert client.events("j1") == ["job.ack", "job.ack", "job.result"]
    assert read_print_log([tmp_path]).job_ids == ["j1"]


async def test_jobs_print_in_arrival_order(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    ids = [f"j{i}" for i in range(20)]
    for i, job_id in enumerate(ids):
        await agent.on_dispatch(client, dispatch_data(job(job_id, ("kitchen-1", "bar-1")[i % 2])))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._worker)
        await wait_for_result(client, ids[-1])
        nursery.cancel_scope.cancel()
    close_agent(agent)
    assert read_print_log([tmp_path]).job_ids == ids


async def test_printing_left_by_a_crash_is_reported_unknown_not_printed(tmp_path: Path) -> None:
    (tmp_path / A.JOURNAL).write_text('{"job_id":"j1","state":"printing","at":1.0}\n')
    agent = make_agent(tmp_path)
    client = FakeClient()
    await agent.on_dispatch(client, dispatch_data(job()))  # type: ignore[arg-type]
    assert client.events("j1") == ["job.ack", "job.result"]
    [result] = client.results("j1")
    assert result["success"] is False and result["message"] == A.UNKNOWN_MESSAGE
    # recorded as done: the next redelivery replays the same answer
    await agent.on_dispatch(client, dispatch_data(job(attempt=2)))  # type: ignore[arg-type]
    assert client.results("j1") == [result, result]
    close_agent(agent)
    assert read_print_log([tmp_path]).job_ids == []
    assert A.Journal.open(tmp_path / A.JOURNAL).decide("j1") is A.Action.REPLAY


async def test_fail_printer_fails_without_printing(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, fail_printers=frozenset({"bar-1"}))
    client = FakeClient()
    agent.client = client  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._worker)
        await agent.on_dispatch(client, dispatch_data(job("j1", "bar-1")))  # type: ignore[arg-type]
        await wait_for_result(client, "j1")
        nursery.cancel_scope.cancel()
    close_agent(agent)
    [result] = client.results("j1")
    assert result["success"] is False and result["message"] == "printer bar-1 is out of paper"
    assert read_print_log([tmp_path]).job_ids == []
    assert A.Journal.open(tmp_path / A.JOURNAL).decide("j1") is A.Action.REPLAY


async def test_job_for_a_printer_not_attached_fails_at_once(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    client = FakeClient()
    await agent.on_dispatch(client, dispatch_data(job("j1", "elsewhere")))  # type: ignore[arg-type]
    close_agent(agent)
    assert client.events("j1") == ["job.ack", "job.result"]
    assert "not attached" in client.results("j1")[0]["message"]
    assert read_print_log([tmp_path]).job_ids == []


async def test_full_queue_leaves_the_job_unacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_runtime, "QUEUE_SIZE", 1)
    agent = make_agent(tmp_path)
    client = FakeClient()
    await agent.on_dispatch(client, dispatch_data(job("j1")))  # type: ignore[arg-type]
    await agent.on_dispatch(client, dispatch_data(job("j2")))  # type: ignore[arg-type]
    close_agent(agent)
    assert client.events("j1") == ["job.ack"]
    assert client.events("j2") == []  # printd re-sends it after its ack timeout
    assert "j2" not in agent.in_flight


async def test_result_of_a_print_done_while_disconnected_waits_for_redelivery(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    client = FakeClient()
    await agent.on_dispatch(client, dispatch_data(job()))  # type: ignore[arg-type]
    dead = BrokenClient()
    agent.client = dead  # type: ignore[assignment]  # the connection dropped before the print finished
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._worker)
        await wait_for_result(dead, "j1")  # tried, failed: no exception escapes the worker
        nursery.cancel_scope.cancel()
    assert client.results("j1") == [] and not agent.in_flight
    reconnected = FakeClient()
    await agent.on_dispatch(reconnected, dispatch_data(job(attempt=2)))  # type: ignore[arg-type]
    close_agent(agent)
    assert reconnected.events("j1") == ["job.ack", "job.result"]
    assert reconnected.results("j1")[0]["success"] is True
    assert read_print_log([tmp_path]).job_ids == ["j1"]


# -- reconnecting and keeping the connection (trio's MockClock) ------------------------------


class Stop(Exception):
    """The script of connection outcomes is over."""


class SessionClient(FakeClient):
    """A connection printd accepted: hello, then it ends after `lasts` s with `code`."""

    def __init__(self, lasts: float, code: int | None, *, answers_pings: bool = True) -> None:
        super().__init__()
        self.lasts, self.code, self.answers_pings = lasts, code, answers_pings
        self.inbox: list[dict[str, Any]] = [{"event": "hello", "data": {"instance": "p1", "company": "acme"}}]
        self.arrived = trio.Event()
        self.ends_at: float | None = None
        self.aborted = False

    async def send(self, event: str, data: dict[str, Any] | None = None, *, id: int | None = None) -> None:
        await super().send(event, data, id=id)
        if event == "ping" and self.answers_pings:
            self.inbox.append({"event": "ack", "id": id, "data": {}})
            self.arrived.set()

    async def recv(self, timeout: float | None = None) -> Any:
        if self.ends_at is None:
            self.ends_at = trio.current_time() + self.lasts
        while not self.inbox:
            if trio.current_time() >= self.ends_at:
                raise A.ConnectionClosed(self.code, "scripted end")
            self.arrived = trio.Event()
            with trio.move_on_at(self.ends_at):
                await self.arrived.wait()
        return self.inbox.pop(0)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def abort(self) -> None:
        self.aborted = True


class ScriptedPrintd:
    """Stands in for WsClient.connect: each attempt takes the next outcome of the script."""

    def __init__(self, *script: SessionClient | None) -> None:
        self.script = list(script)
        self.attempts: list[float] = []
        self.ended: list[float] = []

    async def connect(self, url: str, **kw: Any) -> SessionClient:
        now = trio.current_time()
        self.attempts.append(now)
        if not self.script:
            raise Stop
        step = self.script.pop(0)
        if step is None:
            raise OSError(111, "Connection refused")
        return step


def top() -> float:
    return 1.0  # the jitter's upper end: every delay is its ceiling


async def run_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printd: ScriptedPrintd) -> A.Agent:
    monkeypatch.setattr(A.WsClient, "connect", printd.connect)
    settings = A.AgentSettings(url="http://127.0.0.1:1", token="t", printers=("kitchen-1",), output=tmp_path)
    agent = A.Agent(
        settings,
        A.Journal.open(tmp_path / A.JOURNAL),
        A.PrintDevice(tmp_path, "a"),
        A.Reporter(True),
        rng=top,
    )
    with pytest.raises(Stop):
        await agent._connect_loop()
    close_agent(agent)
    return agent


async def test_a_hello_resets_the_backoff_even_after_a_short_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    """An agent that once reconnected late must not wait up to 30 s at the next printd restart."""
    session = SessionClient(lasts=3.0, code=None)  # lost after 3 s (printd killed again)
    printd = ScriptedPrintd(*[None] * 10, session)
    await run_script(tmp_path, monkeypatch, printd)
    lost_at = printd.attempts[10] + 3.0
    assert printd.attempts[11] - lost_at <= 0.5 + 1e-6


async def test_going_away_and_reconnect_now_reconnect_within_250_ms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    for code in (1001, 4012):
        printd = ScriptedPrintd(*[None] * 10, SessionClient(lasts=2.0, code=code), None)
        (tmp_path / str(code)).mkdir()
        await run_script(tmp_path / str(code), monkeypatch, printd)
        assert printd.attempts[11] - (printd.attempts[10] + 2.0) <= 0.25 + 1e-6, code
        # and if printd is not back yet, the next attempts stay short (early cap)
        assert printd.attempts[12] - printd.attempts[11] <= 0.5 + 1e-6


async def test_first_attempts_after_a_clean_close_are_capped_low(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    printd = ScriptedPrintd(SessionClient(lasts=60.0, code=1000), *[None] * 5)
    await run_script(tmp_path, monkeypatch, printd)
    closed_at = printd.attempts[0] + 60.0
    gaps = [b - a for a, b in zip([closed_at, *printd.attempts[1:]], printd.attempts[1:], strict=False)]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 4.0, 5.0, 5.0])


async def test_a_silent_connection_is_dropped_within_ping_interval_plus_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    silent = SessionClient(lasts=3600.0, code=None, answers_pings=False)  # the network dropped it
    printd = ScriptedPrintd(silent)
    await run_script(tmp_path, monkeypatch, printd)
    pings = [d for e, d in silent.sent if e == "ping"]
    assert len(pings) == 1 and silent.aborted  # dropped without a closing handshake
    bound = A.PING_INTERVAL + A.PING_TIMEOUT + 0.5  # + the first reconnect delay
    assert printd.attempts[1] - printd.attempts[0] <= bound + 1e-6


async def test_a_quiet_but_healthy_connection_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    quiet = SessionClient(lasts=120.0, code=1000)  # printd answers every ping, sends nothing else
    printd = ScriptedPrintd(quiet)
    await run_script(tmp_path, monkeypatch, printd)
    assert not quiet.aborted
    assert printd.attempts[1] - printd.attempts[0] >= 120.0  # held until printd closed it
    assert len([e for e, _ in quiet.sent if e == "ping"]) >= 120 // A.PING_INTERVAL - 1
