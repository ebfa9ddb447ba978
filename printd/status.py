"""Printer status fan-out: latest state per printer, flushed per company each window.

`StatusBatcher` is the policy (no I/O, no clock): updates go in, and each window the changed
printers of every company come out, one latest state per printer. It is also the live view
that new dashboards get as a snapshot, and it keeps that view bounded: so many printers per
agent and per company, and the printers of an agent that left are evicted after a while.
`StatusFanout` is the trio shell that ticks the window. Each tick delivers, per company, one
batch to this instance's dashboards (the printers reported here and those other instances sent
since the last tick, latest state per printer wins: still at most one batch per window per
dashboard), publishes the printers reported here to the other instances (one pipelined round
trip), and keeps their latest state in the cluster backend for new dashboards' snapshots. A
dashboard on any instance receives only its own company's printers: an instance subscribes to a
company's channel only while it holds a dashboard of it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import orjson
import structlog
import trio

from printd.cluster.base import ClusterBackend, ClusterUnavailable
from printd.config import StatusConfig
from printd.protocol import encode_batch

log = structlog.get_logger("printd.status")

BATCH_EVENT = "printer.status.batch"
SNAPSHOT_EVENT = "printer.status.snapshot"
#: Bytes `encode_batch` adds around the items (the longer event name, with room to spare).
_ENVELOPE = len(encode_batch(SNAPSHOT_EVENT, [])) + 8


def company_topic(company: str) -> str:
    """The bus topic on which a company's dashboards receive their updates."""
    return f"company:{company}"


#: Company-topic frames between instances: status items (printer id, item) to merge into the
#: next batch, or a whole event (job.completed) to forward as it is.
STATUS_FRAME = b"S"
EVENT_FRAME = b"E"
_PAIR = struct.Struct("!HI")


def encode_items(pairs: Sequence[tuple[str, bytes]]) -> bytes:
    """(printer id, item) pairs as one frame, items kept as they are (no re-encoding)."""
    out = [STATUS_FRAME]
    for printer_id, item in pairs:
        pid = printer_id.encode()
        out += [_PAIR.pack(len(pid), len(item)), pid, item]
    return b"".join(out)


def decode_items(frame: bytes) -> list[tuple[str, bytes]]:
    """The pairs of a frame from another instance; [] for anything malformed."""
    pairs: list[tuple[str, bytes]] = []
    pos, end = 1, len(frame)
    while pos < end:
        if pos + _PAIR.size > end:
            return []
        n_pid, n_item = _PAIR.unpack_from(frame, pos)
        pos += _PAIR.size
        if pos + n_pid + n_item > end:
            return []
        pid = frame[pos : pos + n_pid].decode(errors="replace")
        pairs.append((pid, frame[pos + n_pid : pos + n_pid + n_item]))
        pos += n_pid + n_item
    return pairs


def split_pairs(pairs: list[tuple[str, bytes]], max_bytes: int) -> list[list[tuple[str, bytes]]]:
    """(printer id, item) pairs grouped like `split_items` groups items."""
    out: list[list[tuple[str, bytes]]] = [[]]
    size = 0
    for pair in pairs:
        cost = len(pair[0]) + len(pair[1]) + _PAIR.size
        if out[-1] and size + cost > max_bytes:
            out.append([])
            size = 0
        out[-1].append(pair)
        size += cost
    return out


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
        self._queue: list[tuple[str, str, bytes]] = []

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
            self._queue.append((company, printer_id, item))
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
                self._queue.append((company, printer_id, mark))
        self._held.pop((company, agent_id), None)
        if not owners:
            del self._owner[company], self._latest[company]
        return printers

    # -- out ---------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._changed or self._queue)

    def drain(self) -> list[tuple[str, list[tuple[str, bytes]]]]:
        """The batches due now: (company, [(printer id, latest item) per changed printer])."""
        if self.coalesce:
            out = [(company, list(items.items())) for company, items in self._changed.items()]
            self._changed = {}
            return out
        queue, self._queue = self._queue, []
        return [(company, [(printer_id, item)]) for company, printer_id, item in queue]

    def snapshot(self, company: str) -> list[bytes]:
        return list(self._latest.get(company, {}).values())

    def snapshot_ids(self, company: str) -> list[str]:
        return list(self._latest.get(company, ()))

    def latest(self, company: str, printer_id: str) -> bytes | None:
        return self._latest.get(company, {}).get(printer_id)

    def printers(self) -> int:
        return sum(len(p) for p in self._latest.values())


class StatusFanout:
    """Ticks the batch window (see the module docstring); evicts the printers of agents gone for
    `evict_after`. No message it builds exceeds `chunk_bytes`."""

    def __init__(
        self,
        config: StatusConfig,
        deliver: Callable[[str, bytes], int],
        backend: ClusterBackend,
        *,
        snapshot_ttl: float = 3600.0,
    ) -> None:
        self.batcher = StatusBatcher(
            coalesce=config.batch_delay > 0,
            max_printers_per_agent=config.max_printers_per_agent,
            max_printers_per_company=config.max_printers_per_company,
        )
        self._deliver = deliver  # (company, message) to this instance's dashboards of it
        self._backend = backend
        self._snapshot_ttl = snapshot_ttl
        self._delay = config.batch_delay
        self._evict_after = config.evict_after
        self.chunk_bytes = config.chunk_bytes
        self._wakeup = trio.Event()
        #: printers other instances reported since the last tick, by company (latest wins)
        self._remote: dict[str, dict[str, bytes]] = {}
        self._remote_queue: list[tuple[str, str, bytes]] = []  # batching off: each one
        #: evicted printers: their last (offline) item goes out, but leaves the cluster snapshot
        self._dropped: dict[str, set[str]] = {}
        self.batches_sent = 0
        self.cluster_errors = 0
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

    async def cluster_snapshot(self, company: str) -> dict[str, bytes]:
        """The latest states other instances keep for this company (none while the cluster
        backend is unreachable: the snapshot then shows the printers reported here)."""
        try:
            return await self._backend.load_status(company)
        except ClusterUnavailable:
            return {}

    def snapshot_parts(self, company: str, others: Mapping[str, bytes] | None = None) -> Iterator[bytes]:
        """The company's live view for a new dashboard, in messages of at most `chunk_bytes`:
        a `printer.status.snapshot` (always, even empty), then `printer.status.batch` messages
        for the rest. `others` are the printers reported to other instances (this instance's
        own state wins for a printer in both). Each part is built when it is asked for, from the
        latest items, so a part sent after a batch never carries an older state than that batch
        did."""
        event = SNAPSHOT_EVENT
        here = self.batcher.snapshot_ids(company)
        elsewhere = [p for p in (others or {}) if self.batcher.latest(company, p) is None]
        pending = (here + elsewhere)[::-1]  # popped from the end: in order
        while True:
            items: list[bytes] = []
            size = _ENVELOPE
            while pending:
                item = self.batcher.latest(company, pending[-1]) or (others or {}).get(pending[-1])
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

    def from_other_instance(self, company: str, frame: bytes) -> None:
        """Printers another instance reported: into the next batch of this instance's
        dashboards (only companies with a dashboard here are subscribed)."""
        pairs = decode_items(frame)
        if self.batcher.coalesce:
            self._remote.setdefault(company, {}).update(pairs)
        else:
            self._remote_queue += [(company, pid, item) for pid, item in pairs]
            self._wakeup.set()

    def _take_remote(self) -> list[tuple[str, list[tuple[str, bytes]]]]:
        if self.batcher.coalesce:
            remote, self._remote = self._remote, {}
            return [(company, list(items.items())) for company, items in remote.items()]
        queue, self._remote_queue = self._remote_queue, []
        return [(company, [(pid, item)]) for company, pid, item in queue]

    @property
    def pending(self) -> bool:
        return self.batcher.pending or bool(self._remote or self._remote_queue)

    async def flush(self) -> None:
        """One tick: deliver here, publish to the other instances, keep the snapshot."""
        local = self.batcher.drain()
        merged: dict[str, dict[str, bytes]] = {}
        batches: list[tuple[str, list[bytes]]] = []
        if self.batcher.coalesce:
            for company, pairs in self._take_remote() + local:  # this instance's state wins
                merged.setdefault(company, {}).update(pairs)
            batches = [(company, list(items.values())) for company, items in merged.items()]
        else:
            pairs_in_order = self._take_remote() + local
            batches = [(company, [item for _, item in pairs]) for company, pairs in pairs_in_order]
        closed_at = time.time()
        for company, items in batches:
            for part in split_items(items, self.chunk_bytes):
                self.batches_sent += 1
                self._deliver(company, encode_batch(BATCH_EVENT, part, closed_at))
        if local:
            await self._share(local)

    async def _share(self, local: list[tuple[str, list[tuple[str, bytes]]]]) -> None:
        """The printers reported here, to the other instances' dashboards and the snapshot."""
        frames = []
        for company, pairs in local:
            for part in split_pairs(pairs, self.chunk_bytes):
                frames.append((company_topic(company), encode_items(part)))
        dropped, self._dropped = self._dropped, {}
        keep = [(c, {p: i for p, i in pairs if p not in dropped.get(c, ())}) for c, pairs in local]
        try:
            await self._backend.publish(frames)
            await self._backend.save_status(keep, self._snapshot_ttl)
            for company, printers in dropped.items():  # new dashboards elsewhere no longer see them
                await self._backend.drop_status(company, sorted(printers))
        except ClusterUnavailable:
            self.cluster_errors += 1  # dashboards here got theirs; the others catch up later

    def evict_due(self) -> None:
        for company, printers in self.batcher.evict_due(trio.current_time(), time.time()):
            self._dropped.setdefault(company, set()).update(printers)
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
            if self.pending:
                await self.flush()
