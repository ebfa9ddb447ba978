"""Printer status fan-out: latest state per printer, flushed per company each window.

`StatusBatcher` is the policy (no I/O, no clock): updates go in, and each window the changed
printers of every company come out, one latest state per printer. It is also the live view
that new dashboards get as a snapshot, and it keeps that view bounded: so many printers per
agent and per company, and the printers of an agent that left are evicted after a while.
`StatusFanout` is the trio shell that ticks the window and publishes each company's batch on
the bus, so a dashboard on any instance receives only its own company's printers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import orjson
import trio

from printd.cluster.bus import Bus
from printd.config import StatusConfig
from printd.gateway.protocol import encode_batch

BATCH_EVENT = "printer.status.batch"
SNAPSHOT_EVENT = "printer.status.snapshot"
#: Bytes `encode_batch` adds around the items (the longer event name, with room to spare).
_ENVELOPE = len(encode_batch(SNAPSHOT_EVENT, [])) + 8


def company_topic(company: str) -> str:
    """The bus topic on which a company's dashboards receive their updates."""
    return f"company:{company}"


def split_items(items: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """Items in order, grouped so that each group encoded as one message fits `max_bytes`
    (an item is never split; items are far smaller than a message, `status.max_item_bytes`)."""
    budget = max_bytes - _ENVELOPE
    if sum(map(len, items)) + len(items) <= budget:
        return [items]
    parts: list[list[bytes]] = [[]]
    size = 0
    for item in items:
        if parts[-1] and size + len(item) + 1 > budget:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += len(item) + 1
    return parts


class StatusBatcher:
    """Latest-wins coalescing per printer, per company; also the snapshot for new dashboards.

    With `coalesce=False` (batching off) every update is kept in arrival order instead.
    Each printer in the view has an owner, the agent that reported it last; the caps count
    printers by owner. An agent that leaves has its printers evicted once `agent_left`'s due
    time passes (`evict_due`), unless it came back (`agent_arrived`) or the printer moved.
    """

    def __init__(
        self,
        *,
        coalesce: bool = True,
        max_printers_per_agent: int = 100,
        max_printers_per_company: int = 10_000,
    ) -> None:
        self.coalesce = coalesce
        self.max_per_agent = max_printers_per_agent
        self.max_per_company = max_printers_per_company
        self._latest: dict[str, dict[str, bytes]] = {}
        self._owner: dict[str, dict[str, str]] = {}  # company -> printer -> agent id
        self._held: dict[tuple[str, str], int] = {}  # (company, agent) -> printers it owns
        self._departed: dict[tuple[str, str], float] = {}  # in due order (one delay for all)
        self._changed: dict[str, dict[str, bytes]] = {}
        self._queue: list[tuple[str, bytes]] = []

    def admit(self, company: str, agent_id: str, printer_id: str) -> str | None:
        """None if this agent may put this printer in the view; otherwise why not."""
        owners = self._owner.get(company)
        owner = None if owners is None else owners.get(printer_id)
        if owner == agent_id:
            return None
        if owner is None and owners is not None and len(owners) >= self.max_per_company:
            return (
                f"company already has {self.max_per_company} printers in the live view "
                f"(status.max_printers_per_company); printer {printer_id!r} is refused"
            )
        if self._held.get((company, agent_id), 0) >= self.max_per_agent:
            return (
                f"this agent already reports {self.max_per_agent} printers "
                f"(status.max_printers_per_agent); printer {printer_id!r} is refused"
            )
        return None

    def update(self, company: str, agent_id: str, printer_id: str, item: bytes) -> str | None:
        """Take the printer's latest item; a new printer is checked against the caps first
        (None when taken, else why not)."""
        owners = self._owner.get(company)
        if owners is None or owners.get(printer_id) != agent_id:
            refused = self.admit(company, agent_id, printer_id)
            if refused is not None:
                return refused
            self._own(company, agent_id, printer_id)
        self._latest[company][printer_id] = item
        if self.coalesce:
            changed = self._changed.get(company)
            if changed is None:
                changed = self._changed[company] = {}
            changed[printer_id] = item
        else:
            self._queue.append((company, item))
        return None

    def _own(self, company: str, agent_id: str, printer_id: str) -> None:
        owners = self._owner.get(company)
        if owners is None:
            owners = self._owner[company] = {}
            self._latest[company] = {}
        previous = owners.get(printer_id)
        if previous is not None:
            self._release(company, previous)
        owners[printer_id] = agent_id
        key = (company, agent_id)
        self._held[key] = self._held.get(key, 0) + 1

    def _release(self, company: str, agent_id: str) -> None:
        key = (company, agent_id)
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]

    # -- agents coming and going -------------------------------------------------------------

    def agent_arrived(self, company: str, agent_id: str) -> None:
        self._departed.pop((company, agent_id), None)

    def agent_left(self, company: str, agent_id: str, *, due: float) -> None:
        """Evict the agent's printers at `due` unless it is back by then. Due times must come
        in increasing order (one eviction delay for all), which keeps `evict_due` cheap."""
        key = (company, agent_id)
        self._departed.pop(key, None)
        if key in self._held:
            self._departed[key] = due

    def evict_due(self, now: float, wall_now: float) -> list[tuple[str, list[str]]]:
        """Drop the printers of agents gone since before `now` from the view; dashboards get
        each one last time, `offline` and `evicted`. Returns (company, printer ids) evicted."""
        out: list[tuple[str, list[str]]] = []
        while self._departed:
            key, due = next(iter(self._departed.items()))
            if due > now:
                break
            del self._departed[key]
            printers = self._evict(*key, wall_now)
            if printers:
                out.append((key[0], printers))
        return out

    def _evict(self, company: str, agent_id: str, wall_now: float) -> list[str]:
        owners = self._owner[company]
        latest = self._latest[company]
        printers = [p for p, owner in owners.items() if owner == agent_id]
        for printer_id in printers:
            del owners[printer_id]
            last = orjson.loads(latest.pop(printer_id))
            mark = orjson.dumps(
                {
                    "printer_id": printer_id,
                    "status": "offline",
                    "branch": last.get("branch"),
                    "agent_id": agent_id,
                    "at": wall_now,
                    "evicted": True,
                }
            )
            if self.coalesce:
                self._changed.setdefault(company, {})[printer_id] = mark
            else:
                self._queue.append((company, mark))
        self._held.pop((company, agent_id), None)
        if not owners:
            del self._owner[company], self._latest[company]
        return printers

    # -- out ---------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._changed or self._queue)

    def drain(self) -> list[tuple[str, list[bytes]]]:
        """The batches due now: (company, [latest item per changed printer])."""
        if self.coalesce:
            out = [(company, list(items.values())) for company, items in self._changed.items()]
            self._changed = {}
            return out
        queue, self._queue = self._queue, []
        return [(company, [item]) for company, item in queue]

    def snapshot(self, company: str) -> list[bytes]:
        return list(self._latest.get(company, {}).values())

    def snapshot_ids(self, company: str) -> list[str]:
        return list(self._latest.get(company, ()))

    def latest(self, company: str, printer_id: str) -> bytes | None:
        return self._latest.get(company, {}).get(printer_id)

    def printers(self) -> int:
        return sum(len(p) for p in self._latest.values())


class StatusFanout:
    """Ticks the batch window and publishes each company's batch once on the bus; evicts the
    printers of agents gone for `evict_after`. No message it builds exceeds `chunk_bytes`."""

    def __init__(self, bus: Bus, config: StatusConfig) -> None:
        self.batcher = StatusBatcher(
            coalesce=config.batch_delay > 0,
            max_printers_per_agent=config.max_printers_per_agent,
            max_printers_per_company=config.max_printers_per_company,
        )
        self._bus = bus
        self._delay = config.batch_delay
        self._evict_after = config.evict_after
        self.chunk_bytes = config.chunk_bytes
        self._wakeup = trio.Event()
        self.batches_sent = 0
        #: Called with (company, printer ids) after an eviction (the registry forgets them).
        self.on_evict: list[Callable[[str, list[str]], None]] = []

    def admit(self, company: str, agent_id: str, printer_id: str) -> str | None:
        return self.batcher.admit(company, agent_id, printer_id)

    def update(self, company: str, agent_id: str, printer_id: str, item: bytes) -> str | None:
        refused = self.batcher.update(company, agent_id, printer_id, item)
        if self._delay == 0:
            self._wakeup.set()
        return refused

    def agent_arrived(self, company: str, agent_id: str) -> None:
        self.batcher.agent_arrived(company, agent_id)

    def agent_left(self, company: str, agent_id: str) -> None:
        self.batcher.agent_left(company, agent_id, due=trio.current_time() + self._evict_after)

    def snapshot_parts(self, company: str) -> Iterator[bytes]:
        """The company's live view for a new dashboard, in messages of at most `chunk_bytes`:
        a `printer.status.snapshot` (always, even empty), then `printer.status.batch` messages
        for the rest. Each part is built when it is asked for, from the latest items, so a part
        sent after a batch never carries an older state than that batch did."""
        event = SNAPSHOT_EVENT
        pending = self.batcher.snapshot_ids(company)[::-1]  # popped from the end: in order
        while True:
            items: list[bytes] = []
            size = _ENVELOPE
            while pending:
                item = self.batcher.latest(company, pending[-1])
                if item is not None:
                    if items and size + len(item) + 1 > self.chunk_bytes:
                        break
                    items.append(item)
                    size += len(item) + 1
                pending.pop()
            yield encode_batch(event, items)
            event = BATCH_EVENT
            if not pending:
                return

    async def flush(self) -> None:
        for company, items in self.batcher.drain():
            topic = company_topic(company)
            for part in split_items(items, self.chunk_bytes):
                self.batches_sent += 1
                await self._bus.publish(topic, encode_batch(BATCH_EVENT, part))

    def evict_due(self) -> None:
        for company, printers in self.batcher.evict_due(trio.current_time(), time.time()):
            for forget in self.on_evict:
                forget(company, printers)
        if self._delay == 0 and self.batcher.pending:
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_evictions)
            nursery.start_soon(self._run_immediate if self._delay == 0 else self._run_batches)
            task_status.started()

    async def _run_evictions(self) -> None:
        step = min(1.0, max(0.05, self._evict_after / 4))
        while True:
            await trio.sleep(step)
            self.evict_due()

    async def _run_immediate(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.flush()

    async def _run_batches(self) -> None:
        deadline = trio.current_time()
        while True:
            deadline += self._delay
            now = trio.current_time()
            if deadline < now:  # fell behind (a long GC, a busy loop): skip, don't burst
                deadline = now
            await trio.sleep_until(deadline)
            if self.batcher.pending:
                await self.flush()
