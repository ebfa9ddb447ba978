"""RedisLink against a private redis-server that the tests kill, restart empty, pause, and
fail over with Sentinel: calls fail fast, one log line per outage, and everything comes back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from printd.cluster.redis_client import LinkSettings, RedisLink, RedisUnavailable
from printd.cluster.target import parse_redis_url
from tests.redis_server import RedisServer, Sentinels

FAST = LinkSettings(connect_timeout=0.5, command_timeout=0.5, backoff_initial=0.05, backoff_max=0.3)


@pytest.fixture
def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


class Received:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []

    def __call__(self, channel: bytes, data: bytes) -> None:
        self.items.append((channel, data))

    async def wait_for(self, data: bytes, timeout: float = 5.0) -> None:
        await wait_until(lambda: any(d == data for _, d in self.items), timeout)


async def start_link(nursery: trio.Nursery, url: str, received: Received | None = None) -> RedisLink:
    link = RedisLink(parse_redis_url(url), on_message=received or Received(), settings=FAST)
    await nursery.start(link.run)
    with trio.fail_after(5):
        await link.wait_up()
    return link


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition another process changes (a server restarting): no event to wait on."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_calls_fail_fast_while_redis_is_down_and_the_outage_is_logged_once(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    with capture_logs() as logs:
        link = await start_link(nursery, redis.url)
        assert await link.execute("SET", "k", "v") == b"OK"
        redis.stop()
        await wait_until(lambda: not link.up)
        slowest = 0.0
        for _ in range(50):
            t = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await link.execute("GET", "k")
            slowest = max(slowest, time.monotonic() - t)
            await trio.sleep(0.02)  # spans several reconnect attempts
        assert slowest < 0.3  # not the 0.5 s connect timeout: no call waits for a reconnect
        redis.start()
        await wait_until(lambda: link.up)
        assert await link.execute("GET", "k") is None  # came back empty
    events = [e["event"] for e in logs]
    assert events.count("redis unavailable; serving from this instance only until it is back") == 1
    assert events.count("redis available again") == 1
    assert link.state.outages == 1


async def test_a_pubsub_connection_with_no_subscription_takes_pong_for_an_answer(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    """Redis answers PING with +PONG (not the ["pong", ""] of a subscribed connection) before the
    first SUBSCRIBE: that is an answer too, or the link drops and reconnects every few seconds."""
    settings = LinkSettings(connect_timeout=0.5, command_timeout=0.3, ping_interval=0.2)
    link = RedisLink(parse_redis_url(redis.url), on_message=Received(), settings=settings)
    await nursery.start(link.run)
    with trio.fail_after(5):
        await link.wait_up()
    session = link._session
    assert session is not None
    connected = session.last_pong
    await wait_until(lambda: session.last_pong > connected, 2.0)  # a pong after the first ping
    await wait_until(lambda: session.last_pong > connected + 1.0, 3.0)  # and still, past 2 deadlines
    assert link._session is session and link.state.outages == 0


async def test_subscriptions_and_on_up_callbacks_survive_an_empty_restart(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    received = Received()
    ups: list[int] = []
    link = await start_link(nursery, redis.url, received)

    async def on_up() -> None:
        ups.append(1)
        await link.execute("SET", "registered", "yes")

    link.on_up(on_up)
    link.subscribe(b"ch")
    await trio.sleep(0.1)
    await link.execute("PUBLISH", "ch", "before")
    await received.wait_for(b"before")
    redis.restart()
    await wait_until(lambda: ups == [1])
    assert await link.execute("GET", "registered") == b"yes"  # re-registered in the empty server
    await wait_until(lambda: redis.cli("PUBSUB", "NUMSUB", "ch").split()[-1] == "1")
    await link.execute("PUBLISH", "ch", "after")
    await received.wait_for(b"after")


async def test_a_paused_redis_costs_a_call_at_most_the_command_timeout(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    link = await start_link(nursery, redis.url)
    redis.pause()
    try:
        t = time.monotonic()
        with pytest.raises(RedisUnavailable, match="no reply within"):
            await link.execute("GET", "k")
        assert time.monotonic() - t < FAST.command_timeout + 0.3
        t = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await link.execute("GET", "k")  # the dead connection is not waited on again
        assert time.monotonic() - t < 0.1
    finally:
        redis.resume()
    await wait_until(lambda: link.up)
    assert await link.execute("PING") == b"PONG"


async def test_concurrent_callers_share_one_connection_in_order(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    link = await start_link(nursery, redis.url)
    results: dict[int, object] = {}

    async def call(i: int) -> None:
        await link.execute("SET", f"k{i}", i)
        results[i] = await link.execute("GET", f"k{i}")

    async with trio.open_nursery() as n:
        for i in range(300):
            n.start_soon(call, i)
    assert results == {i: str(i).encode() for i in range(300)}
    assert redis.cli("CLIENT", "LIST").count("name=printd") == 2  # commands + pub/sub


async def test_cancelled_callers_do_not_disturb_the_next_reply(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    link = await start_link(nursery, redis.url)
    await link.execute("SET", "a", "1")
    with trio.move_on_after(0):
        await link.execute("GET", "a")  # its reply still arrives and is dropped
    assert await link.execute("SET", "b", "2") == b"OK"
    assert await link.execute("GET", "b") == b"2"


@pytest.mark.slow
async def test_sentinel_failover_is_followed_without_a_restart(tmp_path: Path, nursery: trio.Nursery) -> None:
    sentinels = Sentinels(tmp_path).start()
    try:
        received = Received()
        link = await start_link(nursery, sentinels.url, received)
        link.subscribe(b"ch")
        assert await link.execute("SET", "k", "1") == b"OK"
        old = sentinels.primary.port
        sentinels.primary.stop()
        await wait_until(lambda: sentinels.master_port() not in (None, old), timeout=30)
        with trio.fail_after(20):
            while True:
                try:
                    assert await link.execute("SET", "k", "2") == b"OK"
                    break
                except RedisUnavailable:
                    await trio.sleep(0.1)
        assert link.state.server.endswith(str(sentinels.replica.port))
        await trio.sleep(0.2)
        await link.execute("PUBLISH", "ch", "on-new-master")
        await received.wait_for(b"on-new-master")
    finally:
        sentinels.stop()


async def test_status_keys_renew_their_ttl_sparingly_and_at_once_after_an_empty_restart(
    redis: RedisServer, nursery: trio.Nursery
) -> None:
    from printd.cluster.redis import RedisCluster, new_incarnation

    backend = RedisCluster(
        new_incarnation(), lambda topic, payload: None, parse_redis_url(redis.url), prefix="t", settings=FAST
    )
    await nursery.start(backend.run)
    with trio.fail_after(5):
        await backend.link.wait_up()
    for tick in range(5):  # five fan-out ticks
        await backend.save_status([("acme", {"p1": str(tick).encode()})], 3600)
    assert 3_500_000 < await backend.link.execute("PTTL", "t:status:acme") <= 3_600_000
    assert "cmdstat_pexpire:calls=1," in redis.cli("INFO", "commandstats")  # once, not per tick
    connected = backend.link.state.since
    redis.restart()  # empty
    await wait_until(lambda: backend.link.up and backend.link.state.since != connected)
    await backend.save_status([("acme", {"p1": b"after"})], 3600)
    assert await backend.link.execute("PTTL", "t:status:acme") > 3_500_000  # not a key without a TTL
