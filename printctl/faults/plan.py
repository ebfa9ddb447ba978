"""The faults a failover test injects, and the rounds drawn from a seed. Pure.

Faults are dealt like cards: every `len(faults)` rounds use each fault kind once, in an order
drawn from the seed, so five rounds of five kinds cover them all and a long run stays balanced.
The target of an instance fault and every hold time are drawn from the same generator: the same
seed, fault list, instances and bounds give the same rounds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Fault(StrEnum):
    KILL = "kill"
    DRAIN = "drain"
    PAUSE = "pause"
    REDIS = "redis"
    DB = "db"
    AGENT_CUT = "agent-cut"


#: what each fault does and how it is healed (the help, the docs and the report say the same)
DOES: dict[Fault, str] = {
    Fault.KILL: "SIGKILL an instance; restart it",
    Fault.DRAIN: "SIGTERM an instance (it drains); restart it once it exited",
    Fault.PAUSE: "SIGSTOP an instance until membership dropped it (its lease ended), then hold; SIGCONT",
    Fault.REDIS: "stop Redis; start it again, empty",
    Fault.DB: "cut every connection to PostgreSQL (proxy refuses and resets); restore",
    Fault.AGENT_CUT: "reset the agents' connections and refuse new ones (their network); restore",
}
INSTANCE_FAULTS = frozenset({Fault.KILL, Fault.DRAIN, Fault.PAUSE})
#: the target named in the report for faults that do not pick an instance
FIXED_TARGETS: dict[Fault, str] = {Fault.REDIS: "redis", Fault.DB: "database", Fault.AGENT_CUT: "agents"}


@dataclass(frozen=True, slots=True)
class RoundPlan:
    number: int  # from 1
    fault: Fault
    target: str  # an instance id, or FIXED_TARGETS[fault]
    hold: float  # seconds the fault lasts (a pause: after membership dropped the instance)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """`kill,drain,...` -> faults, in the order given, without repeats; ValueError names the
    unknown ones and the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {f.value for f in Fault}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"unknown fault {', '.join(map(repr, unknown))}; one or more of {', '.join(known)}"
            if unknown
            else f"no fault given; one or more of {', '.join(known)}"
        )
    return tuple(dict.fromkeys(Fault(n) for n in names))


def plan_rounds(
    seed: int,
    rounds: int,
    faults: Sequence[Fault],
    instances: Sequence[str],
    hold: tuple[float, float],
) -> list[RoundPlan]:
    """`rounds` rounds: faults dealt in shuffled decks, instance targets and holds drawn from
    `seed`. Instances are taken in sorted order, so how they were listed does not matter."""
    rng = random.Random(seed)
    targets = sorted(instances)
    deck: list[Fault] = []
    out = []
    for number in range(1, rounds + 1):
        if not deck:
            deck = list(faults)
            rng.shuffle(deck)
        fault = deck.pop()
        target = rng.choice(targets) if fault in INSTANCE_FAULTS else FIXED_TARGETS[fault]
        out.append(RoundPlan(number, fault, target, round(rng.uniform(*hold), 1)))
    return out
