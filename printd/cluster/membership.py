"""Leadership decisions, free of I/O: one decision per heartbeat, on one snapshot of the cluster
(as Patroni's HA loop decides on `get_cluster()`).

The leader is the instance that runs the cluster-wide chores (job expiry, releasing the agents
of instances that are gone). Its lease lives in the cluster backend; its fencing token lives in
the store, which refuses a chore made under an older token. So a leader that was paused past
its lease, and wakes up still believing it leads, can do no harm even before it notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from printd.cluster.base import ClusterView


class LeaderAction(StrEnum):
    ACQUIRE = "acquire"  # nobody leads: try to take the lease
    RENEW = "renew"  # we lead: extend the lease
    STEP_DOWN = "step_down"  # we lead but are draining: hand over now
    FOLLOW = "follow"  # somebody else leads


def leader_action(view: ClusterView, me: str, *, draining: bool) -> LeaderAction:
    if view.leader == me:
        return LeaderAction.STEP_DOWN if draining else LeaderAction.RENEW
    if view.leader is None and not draining:
        return LeaderAction.ACQUIRE
    return LeaderAction.FOLLOW


@dataclass(slots=True)
class Leadership:
    """What this instance believes about its own leadership, and until when it may act on it.

    A lease is only as good as its last renewal: if renewals fail (the backend is down), the
    instance stops acting as leader once the TTL since the last successful one has passed,
    whatever it last heard.
    """

    ttl: float
    token: int | None = None
    valid_until: float = 0.0

    def acquired(self, token: int, now: float) -> None:
        self.token = token
        self.valid_until = now + self.ttl

    def renewed(self, now: float) -> None:
        self.valid_until = now + self.ttl

    def lost(self) -> None:
        self.token = None
        self.valid_until = 0.0

    def active(self, now: float) -> bool:
        return self.token is not None and now < self.valid_until
