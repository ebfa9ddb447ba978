"""The live printer view: latest-wins batching, caps, eviction of departed agents, chunking."""

from __future__ import annotations

import orjson
import trio

from printd.cluster.local import LocalCluster, LocalSpace
from printd.cluster.redis import new_incarnation
from printd.config import StatusConfig
from printd.status import (
    BATCH_EVENT,
    SNAPSHOT_EVENT,
    StatusBatcher,
    StatusFanout,
    company_topic,
    decode_items,
    encode_items,
    split_items,
)


def item(printer_id: str, agent_id: str = "a1", branch: str = "b1", **extra: object) -> bytes:
    return orjson.dumps(
        {"printer_id": printer_id, "status": "online", "branch": branch, "agent_id": agent_id, **extra}
    )


def ids(items: list[bytes]) -> list[str]:
    return [orjson.loads(i)["printer_id"] for i in items]


def items_of(pairs: list[tuple[str, bytes]]) -> list[bytes]:
    return [i for _, i in pairs]


class Dashboards:
    """What one instance's hub delivers to its dashboards, by company."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def __call__(self, company: str, message: bytes) -> int:
        self.got.append((company, message))
        return 1

    def printers(self, company: str) -> list[dict[str, object]]:
        return [p for c, m in self.got if c == company for p in orjson.loads(m)["data"]["printers"]]


def fanout(space: LocalSpace, config: StatusConfig | None = None) -> tuple[StatusFanout, Dashboards]:
    """One instance's fan-out on a shared in-memory cluster backend, subscribed to acme."""
    dashboards = Dashboards()
    holder: list[StatusFanout] = []
    backend = LocalCluster(
        new_incarnation(),
        lambda topic, frame: holder[0].from_other_instance(topic.split(":", 1)[1], frame),
        space,
    )
    backend.subscribe(company_topic("acme"))
    f = StatusFanout(config or StatusConfig(), dashboards, backend)
    holder.append(f)
    return f, dashboards


def test_latest_state_per_printer_wins_within_a_window() -> None:
    b = StatusBatcher()
    for seq in range(3):
        assert b.update("acme", "a1", "p1", item("p1", seq=seq)) is None
    assert b.update("globex", "g1", "p1", item("p1", agent_id="g1")) is None
    batches = dict(b.drain())
    assert [orjson.loads(i)["seq"] for i in items_of(batches["acme"])] == [2]
    assert ids(items_of(batches["globex"])) == ["p1"]
    assert not b.pending


def test_printers_per_agent_are_capped() -> None:
    b = StatusBatcher(max_printers_per_agent=2)
    assert b.update("acme", "a1", "p1", item("p1")) is None
    assert b.update("acme", "a1", "p2", item("p2")) is None
    refused = b.admit("acme", "a1", "p3")
    assert refused is not None and "max_printers_per_agent" in refused and "2" in refused
    assert b.update("acme", "a1", "p3", item("p3")) == refused
    assert b.admit("acme", "a1", "p1") is None  # its own printers keep updating
    assert b.admit("acme", "a2", "p3") is None  # another agent has its own allowance
    assert ids(b.snapshot("acme")) == ["p1", "p2"]


def test_printers_per_company_are_capped() -> None:
    b = StatusBatcher(max_printers_per_company=3)
    for agent, printer in [("a1", "p1"), ("a1", "p2"), ("a2", "p3")]:
        assert b.update("acme", agent, printer, item(printer, agent_id=agent)) is None
    refused = b.update("acme", "a2", "p4", item("p4", agent_id="a2"))
    assert refused is not None and "max_printers_per_company" in refused
    assert b.update("globex", "g1", "p4", item("p4")) is None  # other companies are unaffected
    assert b.printers() == 4


def test_a_printer_that_changes_agent_moves_between_allowances() -> None:
    b = StatusBatcher(max_printers_per_agent=1)
    assert b.update("acme", "a1", "p1", item("p1")) is None
    assert b.update("acme", "a2", "p1", item("p1", agent_id="a2")) is None  # taken over
    assert b.admit("acme", "a1", "p2") is None  # a1 holds nothing any more
    assert b.admit("acme", "a2", "p2") is not None


def test_departed_agents_printers_are_evicted_and_marked_offline() -> None:
    b = StatusBatcher()
    b.update("acme", "a1", "p1", item("p1", blob="x" * 3000))
    b.update("acme", "a1", "p2", item("p2"))
    b.update("acme", "a2", "q1", item("q1", agent_id="a2"))
    b.drain()
    b.agent_left("acme", "a1", due=100.0)
    assert b.evict_due(99.0, 5000.0) == []
    assert b.evict_due(100.0, 5000.0) == [("acme", ["p1", "p2"])]
    assert ids(b.snapshot("acme")) == ["q1"]  # the memory is given back
    (company, marks), *_ = b.drain()
    assert company == "acme"
    assert [orjson.loads(m) for m in items_of(marks)] == [
        {
            "printer_id": p,
            "status": "offline",
            "branch": "b1",
            "agent_id": "a1",
            "at": 5000.0,
            "evicted": True,
        }
        for p in ("p1", "p2")
    ]
    assert b.admit("acme", "a1", "p9") is None and b.printers() == 1


def test_an_agent_back_before_the_deadline_keeps_its_printers() -> None:
    b = StatusBatcher()
    b.update("acme", "a1", "p1", item("p1"))
    b.agent_left("acme", "a1", due=100.0)
    b.agent_arrived("acme", "a1")
    assert b.evict_due(1000.0, 0.0) == []
    assert ids(b.snapshot("acme")) == ["p1"]


def test_a_printer_taken_over_meanwhile_is_not_evicted_with_its_old_agent() -> None:
    b = StatusBatcher()
    b.update("acme", "a1", "p1", item("p1"))
    b.update("acme", "a1", "p2", item("p2"))
    b.agent_left("acme", "a1", due=10.0)
    b.update("acme", "a2", "p2", item("p2", agent_id="a2"))
    assert b.evict_due(10.0, 0.0) == [("acme", ["p1"])]
    assert ids(b.snapshot("acme")) == ["p2"]


def test_an_agent_without_printers_leaves_nothing_behind() -> None:
    b = StatusBatcher()
    b.agent_left("acme", "idle", due=1.0)
    assert b.evict_due(2.0, 0.0) == []
    assert not b.pending


def test_split_items_keeps_every_message_under_the_limit() -> None:
    items = [item(f"p{i}", blob="x" * 300) for i in range(20)]
    parts = split_items(items, 1500)
    assert [i for part in parts for i in part] == items  # nothing lost, order kept
    assert len(parts) > 1
    for part in parts:
        assert len(b'{"event":"printer.status.batch","data":{"printers":[' + b",".join(part) + b"]}}") <= 1500
    assert split_items(items[:2], 1_000_000) == [items[:2]]
    assert split_items([], 100) == [[]]


async def test_snapshot_parts_are_fresh_and_bounded(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = fanout(LocalSpace(), StatusConfig(chunk_bytes=2048))
    for i in range(10):
        f.update("acme", "a1", f"p{i}", item(f"p{i}", blob="x" * 300, v=1))
    elsewhere = {"p0": item("p0", v=0), "q1": item("q1", v=7)}  # reported to other instances
    parts = f.snapshot_parts("acme", elsewhere)
    first = orjson.loads(next(parts))
    assert first["event"] == SNAPSHOT_EVENT
    f.update("acme", "a1", "p9", item("p9", v=2))  # changes while the snapshot goes out
    rest = [orjson.loads(p) for p in parts]
    assert {m["event"] for m in rest} == {BATCH_EVENT}
    seen = {p["printer_id"]: p["v"] for m in [first, *rest] for p in m["data"]["printers"]}
    assert seen == {**{f"p{i}": 1 for i in range(9)}, "p9": 2, "q1": 7}  # this instance's p0 wins
    assert len(list(f.snapshot_parts("nobody"))) == 1  # an empty snapshot is still sent


async def test_fanout_evicts_departed_agents_after_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    space = LocalSpace()
    f, dashboards = fanout(space, StatusConfig(evict_after=300.0))
    forgotten: list[tuple[str, list[str]]] = []
    f.on_evict.append(lambda company, printers: forgotten.append((company, printers)))
    async with trio.open_nursery() as nursery:
        await nursery.start(f.run)
        f.update("acme", "a1", "p1", item("p1"))
        await trio.sleep(1)
        assert set(space.status["acme"][0]) == {"p1"}  # in the cluster's snapshot
        dashboards.got.clear()
        f.agent_left("acme", "a1")
        await trio.sleep(299)
        assert forgotten == [] and f.batcher.printers() == 1
        await trio.sleep(2)
        assert forgotten == [("acme", ["p1"])] and f.batcher.printers() == 0
        (printer,) = dashboards.printers("acme")
        assert printer["status"] == "offline"
        assert space.status["acme"][0] == {}  # and out of the cluster's snapshot
        nursery.cancel_scope.cancel()


def test_item_frames_between_instances_round_trip_and_refuse_garbage() -> None:
    pairs = [("p1", item("p1")), ("p-2", b"{}"), ("ü", b'{"x":1}')]
    assert decode_items(encode_items(pairs)) == pairs
    assert decode_items(encode_items([])) == []
    assert decode_items(encode_items(pairs)[:-1]) == []  # torn
    assert decode_items(b"S\x00") == []


async def test_one_batch_per_window_merges_this_instance_and_the_others() -> None:
    """Dashboards on instance A get printers reported to B in A's next batch, merged with A's
    own: one batch per window per dashboard, the latest state per printer."""
    space = LocalSpace()
    a, on_a = fanout(space)
    b, on_b = fanout(space)
    b.update("acme", "agent-b", "pb", item("pb", v=1))
    a.update("acme", "agent-a", "pa", item("pa", v=1))
    await b.flush()  # B's tick: its own dashboards, then to A
    assert [p["printer_id"] for p in on_b.printers("acme")] == ["pb"]
    assert on_a.got == []  # nothing until A's own tick
    b.update("acme", "agent-b", "pb", item("pb", v=2))
    await b.flush()
    await a.flush()
    assert len(on_a.got) == 1  # one batch for A's dashboards
    assert {p["printer_id"]: p["v"] for p in on_a.printers("acme")} == {"pa": 1, "pb": 2}
    snapshot = await a.cluster_snapshot("acme")  # what a new dashboard on A is also shown
    assert set(snapshot) == {"pa", "pb"} and orjson.loads(snapshot["pb"])["v"] == 2
