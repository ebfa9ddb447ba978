"""A load worker that tells the failover test what its agents went through:
`python -m printctl.faults.worker`, started by failover-test's conductor in place of
printctl.loadgen.worker, with the same stdin protocol.

The fleet is the load test's (printctl.loadgen.fleet.Fleet). This subclass also writes one line
per agent connection that opened (hello) or closed, and per client-visible error, with its time,
to OUT/events-wN.jsonl (printctl.faults.board reads them). It hooks the fleet's connection and
error callbacks, so it follows their signatures. Each line is one unbuffered append: a reader
never sees half of it.
"""

from __future__ import annotations

import time
from pathlib import Path

from printctl.faults.board import Event, event_line
from printctl.loadgen.client import Conn
from printctl.loadgen.fleet import Fleet
from printctl.loadgen.plan import LoadPlan
from printctl.loadgen.worker import serve


class ObservedFleet(Fleet):
    def __init__(
        self, plan: LoadPlan, worker: int, url: str, secret: str, run_id: str, out_dir: Path, control: int
    ) -> None:
        self.events = open(out_dir / f"events-w{worker}.jsonl", "ab", buffering=0)  # noqa: SIM115
        super().__init__(plan, worker, url, secret, run_id, out_dir, control)

    def _note(self, event: Event) -> None:
        if not self.events.closed:
            self.events.write(event_line(event))

    def _opened(self, conn: Conn) -> None:
        super()._opened(conn)
        if conn.kind == "agent":
            self._note(Event(time.time(), "open", conn.index, conn.instance))

    def _closed(self, conn: Conn, counted: bool = True) -> None:
        if conn.kind == "agent" and conn.t_open and not self.stopping:
            self._note(Event(time.time(), "close", conn.index, conn.instance, conn.why))
        super()._closed(conn, counted)

    def _error(self, kind: str) -> None:
        super()._error(kind)
        self._note(Event(time.time(), "error", detail=kind))

    def _finish(self) -> None:
        super()._finish()
        self.events.close()


def main() -> None:
    serve(ObservedFleet)


if __name__ == "__main__":
    main()
