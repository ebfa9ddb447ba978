"""Backends for the cluster contract suite: the in-memory one and the real Redis server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from printd.cluster.base import ClusterBackend
from printd.cluster.local import LocalCluster, LocalSpace
from printd.cluster.redis import RedisCluster, new_incarnation
from printd.cluster.redis_client import LinkSettings
from printd.cluster.target import parse_redis_url

REDIS_URL = os.environ.get("PRINTD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Inbox:
    """Messages one backend received, with a way to wait for the next one."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._arrived = trio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self._arrived.set()

    async def next(self, timeout: float = 3.0) -> tuple[str, bytes]:
        with trio.fail_after(timeout):
            while not self.messages:
                await self._arrived.wait()
                self._arrived = trio.Event()
        return self.messages.pop(0)


Factory = Callable[[], Awaitable[tuple[ClusterBackend, Inbox]]]


@pytest.fixture(params=["local", "redis"])
async def make_backend(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[Factory]:
    """Backends that see each other (one LocalSpace, or one Redis key prefix), already running."""
    space = LocalSpace()
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    made: list[ClusterBackend] = []

    async def make() -> tuple[ClusterBackend, Inbox]:
        inbox = Inbox()
        backend: ClusterBackend
        if request.param == "local":
            backend = LocalCluster(new_incarnation(), inbox, space)
        else:
            backend = RedisCluster(
                new_incarnation(), inbox, parse_redis_url(REDIS_URL), prefix=prefix, settings=LinkSettings()
            )
        made.append(backend)
        await nursery.start(backend.run)
        if isinstance(backend, RedisCluster):
            with trio.fail_after(5):
                await backend.link.wait_up()
        return backend, inbox

    yield make
    if request.param == "redis":
        await _delete_prefix(made, prefix)


async def _delete_prefix(made: list[ClusterBackend], prefix: str) -> None:
    backend = next((b for b in made if isinstance(b, RedisCluster) and b.available), None)
    if backend is None:
        return
    keys: Any = await backend.link.execute("KEYS", f"{prefix}:*")
    if keys:
        await backend.link.execute("DEL", *keys)
