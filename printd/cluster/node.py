"""This instance's part in the cluster: its membership heartbeat, the leader lease and chores,
and the messages other instances route to it.

Every `heartbeat_interval` the node makes one round: heartbeat in the backend and in the store,
read the cluster view, make the leadership decision on it (`membership.leader_action`), and,
while it leads, run the chores under the store's fencing token. While the backend is down the
round keeps the store heartbeat (the leader elsewhere must not think this instance dead) and
serves the last view marked stale; when it comes back, `resync` re-registers what the backend
may have lost (it may have restarted empty).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
import trio

from printd.cluster.base import ClusterBackend, ClusterUnavailable, ClusterView, MemberIdInUse, MemberInfo
from printd.cluster.membership import LeaderAction, Leadership, leader_action
from printd.cluster.routing import INSTANCE_TOPIC, instance_topic
from printd.store import Store, StoreError
from printd.store.base import InstanceConflict, InstanceRow, StaleLeader

log = structlog.get_logger("printd.cluster")

MessageHandler = Callable[[dict[str, Any]], None]
TopicHandler = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class NodeSettings:
    heartbeat_interval: float = 2.0
    member_ttl: float = 6.0
    chore_interval: float = 5.0
    orphan_after: float = 10.0


class ClusterNode:
    def __init__(
        self,
        backend: ClusterBackend,
        store: Store,
        settings: NodeSettings,
        *,
        instance_id: str,
        clustered: bool,
        describe: Callable[[], MemberInfo],
    ) -> None:
        self.backend = backend
        self.store = store
        self.settings = settings
        self.instance_id = instance_id
        self.incarnation = backend.incarnation
        self.clustered = clustered
        self._describe = describe
        self.view: ClusterView | None = None
        self.view_at = 0.0
        self.leadership = Leadership(settings.member_ttl)
        self.chores: Callable[[int], Awaitable[None]] | None = None
        self.resync: Callable[[], Awaitable[None]] | None = None
        self.cut_off: Callable[[], Awaitable[int]] | None = None
        self._last_store_beat: float | None = None  # trio time of the last store heartbeat
        self._handlers: dict[str, MessageHandler] = {}
        self._topics: list[tuple[str, TopicHandler]] = []
        self._next_chores = 0.0
        self.draining = False
        self.store_takeover = False  # another process took our instance id in the store
        backend.on_reconnect(self._on_reconnect)

    # -------------------------------------------------------------- messages

    def handle(self, kind: str, handler: MessageHandler) -> None:
        """Call `handler(message)` for routed messages `{"t": kind, ...}` addressed to us."""
        self._handlers[kind] = handler

    def handle_topic(self, prefix: str, handler: TopicHandler) -> None:
        """Call `handler(topic, payload)` for bus messages whose topic starts with `prefix`."""
        self._topics.append((prefix, handler))

    def on_message(self, topic: str, payload: bytes) -> None:
        """The backend's message callback (synchronous: handlers must not block)."""
        if topic.startswith(INSTANCE_TOPIC):
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError:
                message = None
            kind = message.get("t") if isinstance(message, dict) else None
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                log.warning("unknown routed message ignored", topic=topic)
                return
            assert isinstance(message, dict)
            handler(message)
            return
        for prefix, topic_handler in self._topics:
            if topic.startswith(prefix):
                topic_handler(topic, payload)

    # -------------------------------------------------------------- lifecycle

    def _row(self, now: float) -> InstanceRow:
        info = self._describe()
        return InstanceRow(self.instance_id, self.incarnation, self.clustered, info.url, info.started_at, now)

    async def join(self) -> None:
        """Register in the store and the backend before serving. A live instance with the same
        id (or, without a cluster, any other live instance on this database) refuses the start;
        the entry of our own previous process, killed moments ago, is waited out (one TTL)."""
        deadline = trio.current_time() + self.settings.member_ttl + self.settings.heartbeat_interval
        waited = False
        while True:
            try:
                await self.store.register_instance(self._row(time.time()), ttl=self.settings.member_ttl)
                await self._touch(register=True)
                break
            except (InstanceConflict, MemberIdInUse) as exc:
                if trio.current_time() >= deadline:
                    raise InstanceConflict(str(exc)) from None
                if not waited:
                    log.warning(
                        "another live instance is registered; "
                        "waiting one heartbeat TTL in case it just stopped",
                        reason=str(exc),
                    )
                    waited = True
                await trio.sleep(self.settings.heartbeat_interval / 2)
        self.backend.subscribe(instance_topic(self.instance_id))

    async def _touch(self, *, register: bool = False) -> None:
        try:
            await self.backend.touch_member(self._describe(), self.settings.member_ttl, register=register)
        except ClusterUnavailable:
            if register:  # a cluster whose Redis is down still serves; it registers when back
                log.warning("cluster backend unavailable at start; serving, registering when it is back")

    async def run(
        self, *, connect_timeout: float = 2.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect the backend, join (refusing a live duplicate: InstanceConflict), report ready,
        then heartbeat rounds until cancelled. A backend that does not answer within
        `connect_timeout` does not stop the start: the instance serves, and registers when the
        backend is back."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.backend.run)
            with trio.move_on_after(connect_timeout):
                await self.backend.wait_available()
            await self.join()
            await self.round()  # ready with a view of the cluster (and the lead, if free)
            task_status.started()
            while True:
                await trio.sleep(self.settings.heartbeat_interval)
                await self.round()

    async def round(self) -> None:
        now = trio.current_time()
        try:
            if not await self.store.heartbeat_instance(self.instance_id, self.incarnation, time.time()):
                if not self.store_takeover:
                    log.error("another process took this instance id in the store; ids must be unique")
                self.store_takeover = True
            last, self._last_store_beat = self._last_store_beat, now
            if last is not None and now - last > self.settings.orphan_after and self.cut_off is not None:
                # paused or partitioned long enough for the leader to release our agents: what we
                # believe we hold must be checked against the store before we act on it again
                closed = await self.cut_off()
                log.warning(
                    "this instance was cut off; stale agent connections closed",
                    gap_s=round(now - last, 1),
                    closed=closed,
                )
        except StoreError:
            pass  # the store's own circuit reports it
        try:
            if not self.draining:
                await self.backend.touch_member(self._describe(), self.settings.member_ttl)
            view = await self.backend.get_cluster()
        except MemberIdInUse as exc:
            log.error("instance id clash in the cluster", error=str(exc))
            return
        except ClusterUnavailable:
            return  # the last view is served, marked stale
        self.view, self.view_at = view, time.time()
        await self._lead(view, now)

    async def _lead(self, view: ClusterView, now: float) -> None:
        ttl = self.settings.member_ttl
        action = leader_action(view, self.instance_id, draining=self.draining)
        try:
            if action is LeaderAction.ACQUIRE and await self.backend.attempt_to_acquire_leader(
                self.instance_id, ttl
            ):
                token = await self.store.take_leadership(self.instance_id, time.time())
                self.leadership.acquired(token, now)
                log.info("leader now", fence=token)
            elif action is LeaderAction.RENEW:
                if await self.backend.update_leader(self.instance_id, ttl):
                    if self.leadership.token is None:  # we lead by the lease but have no token
                        self.leadership.acquired(
                            await self.store.take_leadership(self.instance_id, time.time()), now
                        )
                    else:
                        self.leadership.renewed(now)
                else:
                    self._lost("lease lost")
            elif action is LeaderAction.STEP_DOWN:
                await self.backend.delete_leader(self.instance_id)
                self._lost("draining")
            elif self.leadership.token is not None:
                self._lost(f"{view.leader} leads")
        except (ClusterUnavailable, StoreError):
            return
        if self.leadership.active(now) and now >= self._next_chores and self.chores is not None:
            self._next_chores = now + self.settings.chore_interval
            try:
                await self.chores(self.leadership.token)  # type: ignore[arg-type]
            except StaleLeader:
                self._lost("the store holds a newer leader token")
            except StoreError as exc:
                log.debug("leader chores postponed: store unavailable", error=str(exc))

    def _lost(self, why: str) -> None:
        if self.leadership.token is not None:
            log.info("leadership ended", reason=why)
        self.leadership.lost()

    async def _on_reconnect(self) -> None:
        """The backend is back (possibly empty): membership, then what `resync` re-registers."""
        if not self.draining:
            try:
                await self.backend.touch_member(self._describe(), self.settings.member_ttl)
            except MemberIdInUse as exc:  # said at every round too; no traceback for a config error
                log.error("instance id clash in the cluster", error=str(exc))
                return
        if self.resync is not None:
            await self.resync()

    async def leave(self) -> None:
        """Drain: leave membership and the leadership now, so nobody routes to us any more."""
        self.draining = True
        try:
            await self.backend.delete_leader(self.instance_id)
            await self.backend.delete_member(self.instance_id, self.incarnation)
        except ClusterUnavailable:
            pass
        self._lost("draining")

    async def deregister(self) -> None:
        """At the very end: the store row goes, so a restart of this id starts without waiting."""
        try:
            await self.store.remove_instance(self.instance_id, self.incarnation)
        except StoreError:
            pass

    # -------------------------------------------------------------- views for operators

    @property
    def is_leader(self) -> bool:
        return self.leadership.active(trio.current_time())

    async def snapshot(self) -> dict[str, Any]:
        """`/monitoring/cluster`: a fresh view when the backend answers, else the last one
        (marked stale, with its age)."""
        if self.backend.available:
            try:
                self.view, self.view_at = await self.backend.get_cluster(), time.time()
            except ClusterUnavailable:
                pass
        view = self.view
        backend = self.backend.state()
        age = time.time() - self.view_at if view is not None else None
        stale = not backend["available"] or age is None or age > self.settings.member_ttl
        members = []
        for m in view.members if view is not None else ():
            members.append(
                {
                    "id": m.instance_id,
                    "url": m.url,
                    "version": m.info.version,
                    "started_at": m.started_at,
                    "uptime_s": round(time.time() - m.started_at, 1) if m.started_at else None,
                    "health": m.info.health,
                    "draining": m.info.draining,
                    "connections": dict(m.info.connections),
                    "heartbeat_age_s": round(m.heartbeat_age, 3),
                    "leader": view is not None and view.leader == m.instance_id,
                }
            )
        return {
            "instance": self.instance_id,
            "backend": {"kind": self.backend.kind, **backend},
            "stale": stale,
            "view_age_s": None if age is None else round(age, 3),
            "leader": view.leader if view is not None else None,
            "is_leader": self.is_leader,
            "leader_token": self.leadership.token,
            "members": members,
        }
