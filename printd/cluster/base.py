"""What printd instances share, as one backend interface (Patroni's `AbstractDCS` in spirit).

A backend offers a short list of primitives, each with its timing and atomicity stated here, so
that the logic built on them (`cluster.membership`, `cluster.node`) can be checked against the
contract rather than against one implementation. `local.LocalCluster` is the embedded default
(one instance, or several in one process sharing a `LocalSpace`); `redis.RedisCluster` is the
real thing. One contract suite (tests/cluster/test_contract.py) runs against both.

Nothing here holds the only copy of anything that must not be lost: jobs live in the store.
The backend carries hints (which instance holds an agent), leases (membership, leader), status
fan-out and rate-limit counters. Every method of a backend that talks to a server raises
`ClusterUnavailable` when the server cannot be reached, promptly (bounded by the backend's
command timeout), and never anything else for an outage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from printd.ratelimit import Decision, LimitRule

#: (company, agent_id)
AgentKey = tuple[str, str]
#: topic, payload: delivered to the handler of every *other* instance subscribed to the topic
MessageHandler = Callable[[str, bytes], None]


class ClusterUnavailable(Exception):
    """The backend's server cannot be reached now; callers fall back to what this instance holds."""


class MemberIdInUse(Exception):
    """A live member already uses this instance id (another process: ids must be unique)."""

    def __init__(self, member: Member) -> None:
        age = f"{member.heartbeat_age:.1f} s ago"
        super().__init__(
            f"instance id {member.instance_id!r} is in use by a live instance at {member.url or '?'} "
            f"(started {member.started_at:.0f}, last heartbeat {age}); give this one another INSTANCE_ID"
        )
        self.member = member


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What an instance says about itself with every heartbeat."""

    instance_id: str
    incarnation: str  # random per process: tells a live duplicate from our own restart
    url: str = ""
    version: str = ""
    started_at: float = 0.0
    draining: bool = False
    health: str = "ok"
    connections: Mapping[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.instance_id,
                "incarnation": self.incarnation,
                "url": self.url,
                "version": self.version,
                "started_at": self.started_at,
                "draining": self.draining,
                "health": self.health,
                "connections": dict(self.connections),
            }
        )

    @staticmethod
    def decode(raw: bytes | str) -> MemberInfo:
        d: dict[str, Any] = orjson.loads(raw)
        return MemberInfo(
            instance_id=str(d.get("id", "")),
            incarnation=str(d.get("incarnation", "")),
            url=str(d.get("url", "")),
            version=str(d.get("version", "")),
            started_at=float(d.get("started_at", 0.0)),
            draining=bool(d.get("draining", False)),
            health=str(d.get("health", "")),
            connections={str(k): int(v) for k, v in dict(d.get("connections", {})).items()},
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A live member as seen in one `ClusterView`."""

    info: MemberInfo
    heartbeat_age: float  # seconds since its last heartbeat, by the backend's clock
    expires_in: float

    @property
    def instance_id(self) -> str:
        return self.info.instance_id

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def started_at(self) -> float:
        return self.info.started_at


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One consistent read of the cluster: decisions are made on a snapshot, once per beat."""

    members: tuple[Member, ...]
    leader: str | None
    leader_expires_in: float | None = None

    def member(self, instance_id: str) -> Member | None:
        return next((m for m in self.members if m.instance_id == instance_id), None)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(m.instance_id for m in self.members)


@dataclass(frozen=True, slots=True)
class AgentLocation:
    """Where an agent is connected: the instance, its incarnation, and the store's session number
    for that connection (an agent's newer connections have higher numbers, cluster-wide)."""

    instance_id: str
    incarnation: str
    session: int

    def encode(self) -> bytes:
        return f"{self.instance_id}|{self.incarnation}|{self.session}".encode()

    @staticmethod
    def decode(raw: bytes) -> AgentLocation:
        instance, incarnation, session = raw.decode().split("|")
        return AgentLocation(instance, incarnation, int(session))


class ClusterBackend(ABC):
    """The primitives printd's cluster logic is built on. All methods may be called from any
    task; a failed call changes nothing it promised not to (atomic scripts or single commands)."""

    #: short name for logs and /monitoring/cluster: "local" or "redis"
    kind: str = ""

    def __init__(self, incarnation: str, on_message: MessageHandler) -> None:
        self.incarnation = incarnation
        self.on_message = on_message

    # -- lifecycle ---------------------------------------------------------------------------

    @abstractmethod
    async def run(self, *, task_status: Any = None) -> None:
        """Own the connections until cancelled; `task_status.started()` once calls may be made
        (they may still fail with ClusterUnavailable until the server answers)."""

    @property
    @abstractmethod
    def available(self) -> bool:
        """True while the server is reachable (always, for the local backend)."""

    @abstractmethod
    async def wait_available(self) -> None:
        """Return once the server is reachable (at once for the local backend)."""

    @abstractmethod
    def on_reconnect(self, callback: Callable[[], Any]) -> None:
        """Run the async `callback` after every (re)connection: the server may have come back
        empty, so whatever this instance keeps there is registered again from memory."""

    def state(self) -> dict[str, Any]:
        """Connection facts for health and `/monitoring/cluster` (available, since, error)."""
        return {"available": self.available}

    # -- membership --------------------------------------------------------------------------

    @abstractmethod
    async def touch_member(self, info: MemberInfo, ttl: float, *, register: bool = False) -> None:
        """Heartbeat: the member stays listed for `ttl` seconds from now (by the server's clock).
        With `register`, raise MemberIdInUse when a live member with the same id but another
        incarnation exists (nothing is written then). Atomic."""

    @abstractmethod
    async def delete_member(self, instance_id: str, incarnation: str) -> None:
        """Leave membership at once, only if the entry is still ours (compare-and-delete)."""

    @abstractmethod
    async def get_cluster(self) -> ClusterView:
        """Live members (expired ones are dropped) and the current leader, in one read."""

    # -- leader ------------------------------------------------------------------------------

    @abstractmethod
    async def attempt_to_acquire_leader(self, instance_id: str, ttl: float) -> bool:
        """Become leader for `ttl` seconds if nobody is (create-if-absent). Atomic."""

    @abstractmethod
    async def update_leader(self, instance_id: str, ttl: float) -> bool:
        """Renew our leadership (compare-and-set); False when it was lost meanwhile."""

    @abstractmethod
    async def delete_leader(self, instance_id: str) -> None:
        """Step down, only if we are still the leader (compare-and-delete)."""

    # -- presence ----------------------------------------------------------------------------

    @abstractmethod
    async def claim_agents(
        self, claims: Sequence[tuple[AgentKey, AgentLocation]]
    ) -> list[AgentLocation | None]:
        """Record where agents are connected; for each, the previous location (None if none).
        A claim with a lower session than the recorded one is not applied, and the recorded
        (newer) location is returned: the caller then knows its own connection is the stale
        one. Atomic per call."""

    @abstractmethod
    async def release_agents(self, releases: Sequence[tuple[AgentKey, AgentLocation]]) -> None:
        """Forget agents that left, only where the recorded location is still the given one."""

    @abstractmethod
    async def locate_agents(self, keys: Sequence[AgentKey]) -> list[AgentLocation | None]:
        """Where each agent is connected; None when unknown or held by a member that is gone."""

    # -- bus ---------------------------------------------------------------------------------

    @abstractmethod
    def subscribe(self, topic: str) -> None:
        """Receive `topic` from now on (kept across reconnections) through `on_message`.
        Messages this instance published itself are not delivered back (no echo)."""

    @abstractmethod
    def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic`."""

    @abstractmethod
    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send messages (topic, payload) to the other instances subscribed, in one round trip.
        At most once: a message published while a receiver is disconnected is lost, which is
        why nothing that must not be lost travels only on the bus."""

    # -- status snapshot ---------------------------------------------------------------------

    @abstractmethod
    async def save_status(self, updates: Sequence[tuple[str, Mapping[str, bytes]]], ttl: float) -> None:
        """Keep the latest status item per printer (company, {printer id: item}) for new
        dashboards on any instance, in one round trip; a company's set expires `ttl` seconds
        after its last update."""

    @abstractmethod
    async def load_status(self, company: str) -> dict[str, bytes]:
        """The company's latest status items, by printer id."""

    @abstractmethod
    async def drop_status(self, company: str, printer_ids: Sequence[str]) -> None:
        """Forget printers' status (their agent left and the eviction delay passed)."""

    # -- rate limits -------------------------------------------------------------------------

    @abstractmethod
    async def hit_limits(self, rules: Sequence[LimitRule]) -> Decision:
        """Check every rule and consume one unit of each only if all allow (atomic): the
        decision of the most restrictive rule. Never raises for an outage: while the server is
        unreachable, hits are counted by this instance alone (`ratelimit.LocalLimits`)."""
