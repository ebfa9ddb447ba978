"""The agent-addressing port (`agents.AgentDirectory`) over this instance's hub and the cluster
backend: where agents are, and routed messages to the instance holding one.

The same code serves one instance alone (the in-memory backend: every agent is local, nothing
is published to anyone) and a cluster (Redis): one piece of code for one logic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from printd.agents import AgentKey, AgentLink
from printd.cluster.base import AgentLocation, ClusterBackend
from printd.protocol import CLOSE_REPLACED

#: The bus topic on which an instance receives messages addressed to it.
INSTANCE_TOPIC = "inst:"


def instance_topic(instance_id: str) -> str:
    return INSTANCE_TOPIC + instance_id


class AgentRouter:
    def __init__(
        self,
        backend: ClusterBackend,
        local: Callable[[str, str], AgentLink | None],
        *,
        instance_id: str,
    ) -> None:
        self.backend = backend
        self._local = local
        self.instance_id = instance_id
        self.replaced_remote = 0

    def local(self, key: AgentKey) -> AgentLink | None:
        return self._local(*key)

    def _location(self, link: AgentLink) -> AgentLocation:
        return AgentLocation(self.instance_id, self.backend.incarnation, link.session)

    async def register(self, links: Sequence[AgentLink]) -> None:
        # A link whose session the store has not recorded yet claims nothing now (its own
        # connect claims it); the rest are paired with their claims and replies one to one.
        claimed = [x for x in links if x.session]
        claims = [((x.company, x.agent_id), self._location(x)) for x in claimed]
        if not claims:
            return
        previous = await self.backend.claim_agents(claims)
        kicks: list[tuple[str, bytes]] = []
        for link, ((company, agent_id), mine), before in zip(claimed, claims, previous, strict=True):
            if before is None or before == mine:
                continue
            if before.session > mine.session:  # a newer connection exists elsewhere: ours is stale
                link.close(CLOSE_REPLACED, "replaced by a newer connection of the same agent")
            elif before.instance_id != self.instance_id:
                self.replaced_remote += 1
                body = {"t": "replaced", "c": company, "a": agent_id, "s": before.session}
                kicks.append((instance_topic(before.instance_id), orjson.dumps(body)))
        if kicks:
            await self.backend.publish(kicks)

    async def unregister(self, link: AgentLink) -> None:
        if link.session:
            await self.backend.release_agents([((link.company, link.agent_id), self._location(link))])

    async def locate(self, keys: Sequence[AgentKey]) -> dict[AgentKey, str]:
        found = await self.backend.locate_agents(keys)
        return {k: where.instance_id for k, where in zip(keys, found, strict=True) if where is not None}

    async def wake(self, key: AgentKey, instance_id: str) -> None:
        await self.tell(instance_id, {"t": "wake", "c": key[0], "a": key[1]})

    async def tell(self, instance_id: str, message: dict[str, Any]) -> None:
        await self.backend.publish([(instance_topic(instance_id), orjson.dumps(message))])
