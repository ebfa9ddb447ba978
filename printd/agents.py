"""How the domain reaches agents: by (company, agent_id), never by socket.

The job pipeline and the printer registry see a connected agent as an `AgentLink` (what they
may do with it: send a message, close it) and reach agents anywhere in the cluster through the
`AgentDirectory` port: which connection this instance holds, where an agent is connected
cluster-wide, and how to make the holding instance act. The gateway's connection implements
`AgentLink`; `cluster.routing.AgentRouter` implements the directory over this instance's hub
and the cluster backend (in memory when printd runs alone, Redis in a cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

#: (company, agent_id)
AgentKey = tuple[str, str]


class AgentLink(Protocol):
    """A connection of an agent held by this instance."""

    company: str
    agent_id: str
    branch: str
    #: the store's session number for this connection; 0 until the store has recorded it
    session: int

    @property
    def closing(self) -> bool: ...

    def send(self, payload: bytes) -> bool:
        """Queue a message; False when the connection is closing or overflowed."""
        ...

    def close(self, code: int, reason: str) -> None: ...


class AgentDirectory(Protocol):
    """The agent-addressing port."""

    instance_id: str

    def local(self, key: AgentKey) -> AgentLink | None:
        """The agent's open connection on this instance, if any."""
        ...

    async def register(self, links: Sequence[AgentLink]) -> None:
        """These connections are now the agents' current ones: record where they are and close
        an older connection of the same agent wherever it still is."""
        ...

    async def unregister(self, link: AgentLink) -> None:
        """The connection ended: forget it (only if it is still the recorded one)."""
        ...

    async def locate(self, keys: Sequence[AgentKey]) -> dict[AgentKey, str]:
        """Instance ids holding these agents (absent: offline, or unknown while the cluster
        view is unavailable)."""
        ...

    async def wake(self, key: AgentKey, instance_id: str) -> None:
        """Ask the instance holding the agent to deliver its queued jobs (best effort: a lost
        wake-up is made good by that instance's periodic sweep)."""
        ...

    async def tell(self, instance_id: str, message: dict[str, Any]) -> None:
        """Send a routed message to one instance (best effort)."""
        ...
