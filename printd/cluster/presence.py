"""Agent presence: which instance holds an agent's connection, so a job can be routed to it."""

from __future__ import annotations

from typing import Protocol


class Presence(Protocol):
    async def set_online(self, company: str, agent_id: str, instance_id: str) -> None: ...

    async def set_offline(self, company: str, agent_id: str, instance_id: str) -> None: ...

    async def locate(self, company: str, agent_id: str) -> str | None: ...


class LocalPresence:
    """Presence for a single instance: a dict. Offline only if the same instance said online."""

    def __init__(self) -> None:
        self._where: dict[tuple[str, str], str] = {}

    async def set_online(self, company: str, agent_id: str, instance_id: str) -> None:
        self._where[(company, agent_id)] = instance_id

    async def set_offline(self, company: str, agent_id: str, instance_id: str) -> None:
        if self._where.get((company, agent_id)) == instance_id:
            del self._where[(company, agent_id)]

    async def locate(self, company: str, agent_id: str) -> str | None:
        return self._where.get((company, agent_id))
