"""The embedded backend: the cluster primitives in memory, for one instance (the default).

Several `LocalCluster`s may share one `LocalSpace` (several Apps in one process, as the tests
do): they then see each other exactly as instances sharing a Redis would, with TTLs on the trio
clock, so the contract suite and MockClock tests exercise the same logic without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from printd.cluster.base import (
    AgentKey,
    AgentLocation,
    ClusterBackend,
    ClusterView,
    Member,
    MemberIdInUse,
    MemberInfo,
    MessageHandler,
)
from printd.ratelimit import Decision, LimitRule, SlidingWindowLimiter, hit_all


@dataclass(slots=True)
class _Lease:
    holder: str
    expires_at: float


@dataclass(slots=True)
class LocalSpace:
    """What a Redis server would hold, in memory; share it to put backends in one cluster."""

    clock: Callable[[], float] = trio.current_time
    members: dict[str, tuple[MemberInfo, float, float]] = field(default_factory=dict)  # info, beat, exp
    leader: _Lease | None = None
    agents: dict[AgentKey, AgentLocation] = field(default_factory=dict)
    subscribers: dict[str, set[LocalCluster]] = field(default_factory=dict)
    status: dict[str, tuple[dict[str, bytes], float]] = field(default_factory=dict)
    limiter: SlidingWindowLimiter = field(default_factory=SlidingWindowLimiter)

    def live_members(self) -> dict[str, tuple[MemberInfo, float, float]]:
        now = self.clock()
        for mid in [m for m, (_, _, exp) in self.members.items() if exp <= now]:
            del self.members[mid]
        return self.members

    def current_leader(self) -> _Lease | None:
        if self.leader is not None and self.leader.expires_at <= self.clock():
            self.leader = None
        return self.leader


class LocalCluster(ClusterBackend):
    kind = "local"

    def __init__(self, incarnation: str, on_message: MessageHandler, space: LocalSpace | None = None) -> None:
        super().__init__(incarnation, on_message)
        self.space = space if space is not None else LocalSpace()
        self._topics: set[str] = set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            for topic in list(self._topics):
                self.unsubscribe(topic)

    @property
    def available(self) -> bool:
        return True

    async def wait_available(self) -> None:
        return

    def on_reconnect(self, callback: Callable[[], Any]) -> None:
        """Memory never goes away: nothing to re-register."""

    # -- membership --------------------------------------------------------------------------

    async def touch_member(self, info: MemberInfo, ttl: float, *, register: bool = False) -> None:
        now = self.space.clock()
        current = self.space.live_members().get(info.instance_id)
        if register and current is not None and current[0].incarnation != info.incarnation:
            raise MemberIdInUse(Member(current[0], now - current[1], current[2] - now))
        self.space.members[info.instance_id] = (info, now, now + ttl)

    async def delete_member(self, instance_id: str, incarnation: str) -> None:
        current = self.space.members.get(instance_id)
        if current is not None and current[0].incarnation == incarnation:
            del self.space.members[instance_id]

    async def get_cluster(self) -> ClusterView:
        now = self.space.clock()
        members = tuple(
            Member(info, now - beat, exp - now)
            for info, beat, exp in sorted(self.space.live_members().values(), key=lambda m: m[0].instance_id)
        )
        lease = self.space.current_leader()
        return ClusterView(
            members, lease.holder if lease else None, lease.expires_at - now if lease else None
        )

    # -- leader ------------------------------------------------------------------------------

    async def attempt_to_acquire_leader(self, instance_id: str, ttl: float) -> bool:
        if self.space.current_leader() is not None:
            return False
        self.space.leader = _Lease(instance_id, self.space.clock() + ttl)
        return True

    async def update_leader(self, instance_id: str, ttl: float) -> bool:
        lease = self.space.current_leader()
        if lease is None or lease.holder != instance_id:
            return False
        lease.expires_at = self.space.clock() + ttl
        return True

    async def delete_leader(self, instance_id: str) -> None:
        lease = self.space.current_leader()
        if lease is not None and lease.holder == instance_id:
            self.space.leader = None

    # -- presence ----------------------------------------------------------------------------

    async def claim_agents(
        self, claims: Sequence[tuple[AgentKey, AgentLocation]]
    ) -> list[AgentLocation | None]:
        out: list[AgentLocation | None] = []
        agents = self.space.agents
        for key, location in claims:
            previous = agents.get(key)
            out.append(previous)
            if previous is None or previous.session <= location.session:
                agents[key] = location
        return out

    async def release_agents(self, releases: Sequence[tuple[AgentKey, AgentLocation]]) -> None:
        for key, location in releases:
            if self.space.agents.get(key) == location:
                del self.space.agents[key]

    async def locate_agents(self, keys: Sequence[AgentKey]) -> list[AgentLocation | None]:
        live = self.space.live_members()
        out: list[AgentLocation | None] = []
        for key in keys:
            where = self.space.agents.get(key)
            member = live.get(where.instance_id) if where is not None else None
            ok = where is not None and member is not None and member[0].incarnation == where.incarnation
            out.append(where if ok else None)
        return out

    # -- bus ---------------------------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        self.space.subscribers.setdefault(topic, set()).add(self)

    def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        subs = self.space.subscribers.get(topic)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self.space.subscribers[topic]

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            for backend in list(self.space.subscribers.get(topic, ())):
                if backend is not self:
                    backend.on_message(topic, payload)

    # -- status snapshot ---------------------------------------------------------------------

    async def save_status(self, updates: Sequence[tuple[str, Mapping[str, bytes]]], ttl: float) -> None:
        for company, items in updates:
            current = self._status(company)
            current.update(items)
            self.space.status[company] = (current, self.space.clock() + ttl)

    async def load_status(self, company: str) -> dict[str, bytes]:
        return dict(self._status(company))

    async def drop_status(self, company: str, printer_ids: Sequence[str]) -> None:
        current = self._status(company)
        for printer_id in printer_ids:
            current.pop(printer_id, None)

    def _status(self, company: str) -> dict[str, bytes]:
        entry = self.space.status.get(company)
        if entry is None or entry[1] <= self.space.clock():
            return {}
        return entry[0]

    # -- rate limits -------------------------------------------------------------------------

    async def hit_limits(self, rules: Sequence[LimitRule]) -> Decision:
        return hit_all(self.space.limiter, rules, self.space.clock())
