"""Printer status fan-out: latest state per printer, flushed per company each window.

`StatusBatcher` is the policy (no I/O, no clock): updates go in, and each window the changed
printers of every company come out, one latest state per printer. `StatusFanout` is the trio
shell that ticks the window and publishes each company's batch on the bus, so a dashboard on
any instance receives only its own company's printers.
"""

from __future__ import annotations

from collections import defaultdict

import trio

from printd.cluster.bus import Bus
from printd.gateway.protocol import encode_batch

BATCH_EVENT = "printer.status.batch"
SNAPSHOT_EVENT = "printer.status.snapshot"


def company_topic(company: str) -> str:
    """The bus topic on which a company's dashboards receive their updates."""
    return f"company:{company}"


class StatusBatcher:
    """Latest-wins coalescing per printer, per company; also the snapshot for new dashboards.

    With `coalesce=False` (batching off) every update is kept in arrival order instead.
    """

    def __init__(self, *, coalesce: bool = True) -> None:
        self.coalesce = coalesce
        self._latest: dict[str, dict[str, bytes]] = defaultdict(dict)
        self._changed: dict[str, dict[str, bytes]] = {}
        self._queue: list[tuple[str, bytes]] = []

    def update(self, company: str, printer_id: str, item: bytes) -> None:
        self._latest[company][printer_id] = item
        if self.coalesce:
            changed = self._changed.get(company)
            if changed is None:
                changed = self._changed[company] = {}
            changed[printer_id] = item
        else:
            self._queue.append((company, item))

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

    def printers(self) -> int:
        return sum(len(p) for p in self._latest.values())


class StatusFanout:
    """Ticks the batch window and publishes each company's batch once on the bus."""

    def __init__(self, bus: Bus, *, batch_delay: float) -> None:
        self.batcher = StatusBatcher(coalesce=batch_delay > 0)
        self._bus = bus
        self._delay = batch_delay
        self._wakeup = trio.Event()
        self.batches_sent = 0

    def update(self, company: str, printer_id: str, item: bytes) -> None:
        self.batcher.update(company, printer_id, item)
        if self._delay == 0:
            self._wakeup.set()

    def snapshot(self, company: str) -> bytes:
        return encode_batch(SNAPSHOT_EVENT, self.batcher.snapshot(company))

    async def flush(self) -> None:
        for company, items in self.batcher.drain():
            self.batches_sent += 1
            await self._bus.publish(company_topic(company), encode_batch(BATCH_EVENT, items))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._delay == 0:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.flush()
        deadline = trio.current_time()
        while True:
            deadline += self._delay
            now = trio.current_time()
            if deadline < now:  # fell behind (a long GC, a busy loop): skip, don't burst
                deadline = now
            await trio.sleep_until(deadline)
            if self.batcher.pending:
                await self.flush()
