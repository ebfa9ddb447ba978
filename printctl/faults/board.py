"""The simulated agents' connections as the failover test sees them, from the client side.

Each load worker (printctl.faults.worker) appends one JSON line per agent connection that opened
(printd's hello, naming the instance) or closed, and per client-visible error, to
OUT/events-wN.jsonl. `EventFiles` follows those files; `Board` keeps who is connected where and
answers, for a round, which agents were orphaned and how long each took to come back. The board
is pure: fed events, asked with times.

An agent is orphaned when its connection closes during a round. Its reconnect time runs from that
close to its next hello, except while the fault itself kept every way back shut (the agents' own
network cut): then it runs from the heal. A paused instance's agents see nothing until it resumes
and closes their stale connections, so for them too the clock starts at the close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # epoch seconds
    kind: str  # "open", "close" or "error"
    agent: int = -1  # the agent's index (open, close)
    instance: str = ""  # the instance it reached or lost
    detail: str = ""  # why it closed; an error's kind


def parse_event(line: bytes) -> Event | None:
    try:
        raw = orjson.loads(line)
        return Event(
            float(raw["t"]),
            str(raw["e"]),
            int(raw.get("a", -1)),
            str(raw.get("i", "")),
            str(raw.get("k", "")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def event_line(event: Event) -> bytes:
    raw: dict[str, object] = {"t": round(event.t, 4), "e": event.kind}
    if event.kind == "error":
        raw["k"] = event.detail
    else:
        raw |= {"a": event.agent, "i": event.instance}
        if event.detail:
            raw["k"] = event.detail
    return orjson.dumps(raw) + b"\n"


@dataclass(frozen=True, slots=True)
class Reconnects:
    times: tuple[float, ...]  # seconds, one per orphaned agent that came back
    never: tuple[int, ...]  # orphaned agents not back yet

    @property
    def orphans(self) -> int:
        return len(self.times) + len(self.never)


@dataclass
class Board:
    agents: int
    where: dict[int, str] = field(default_factory=dict)  # connected agent -> its instance
    events: list[Event] = field(default_factory=list)  # since the last `trim`

    def feed(self, events: list[Event]) -> None:
        for e in events:
            if e.kind == "open":
                self.where[e.agent] = e.instance
            elif e.kind == "close" and self.where.get(e.agent) == e.instance:
                del self.where[e.agent]
            self.events.append(e)

    def trim(self, before: float) -> None:
        """Forget events older than `before` (a round needs only its own)."""
        self.events = [e for e in self.events if e.t >= before]

    def connected(self) -> int:
        return len(self.where)

    def on(self, instance: str) -> set[int]:
        return {a for a, i in self.where.items() if i == instance}

    def errors(self, since: float, until: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events:
            if e.kind == "error" and since <= e.t <= until:
                out[e.detail] = out.get(e.detail, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def reconnects(self, since: float, until: float, shut_until: float | None = None) -> Reconnects:
        """The agents whose connection closed in [since, until], and how long each took to get
        a hello again (from its close, or from `shut_until` if the fault kept the way back shut
        until then); those without a hello by `until` are not back."""
        closed: dict[int, float] = {}
        back: dict[int, float] = {}
        for e in self.events:
            if not since <= e.t <= until:
                continue
            if e.kind == "close" and e.agent not in closed:
                closed[e.agent] = e.t
            elif e.kind == "open" and e.agent in closed and e.agent not in back:
                back[e.agent] = e.t - max(closed[e.agent], shut_until or 0.0)
        never = tuple(sorted(a for a in closed if a not in back))
        return Reconnects(tuple(max(0.0, back[a]) for a in sorted(back)), never)


class EventFiles:
    """Follows the workers' events-w*.jsonl in a directory: each `read()` returns the whole lines
    appended since the last."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[Event]:
        out: list[Event] = []
        for path in sorted(self.directory.glob("events-w*.jsonl")):
            offset = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            self.offsets[path] = offset + end
            for line in data[:end].splitlines():
                event = parse_event(line)
                if event is not None:
                    out.append(event)
        return out
