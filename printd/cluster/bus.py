"""The message bus: topic -> payload, delivered to every instance subscribed to the topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Handler = Callable[[str, bytes], None]


class Bus(Protocol):
    """Publish/subscribe by topic prefix. Handlers are synchronous and must not block."""

    def subscribe(self, prefix: str, handler: Handler) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...


class LocalBus:
    """The single-instance bus: publishing calls this process's handlers directly."""

    def __init__(self) -> None:
        self._handlers: list[tuple[str, Handler]] = []
        self.published = 0

    def subscribe(self, prefix: str, handler: Handler) -> None:
        self._handlers.append((prefix, handler))

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published += 1
        for prefix, handler in self._handlers:
            if topic.startswith(prefix):
                handler(topic, payload)
