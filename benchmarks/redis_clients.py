"""Which Redis client for printd under trio: a short measurement (docs/architecture.md).

Candidates: coredis (anyio-native), redis-py's sync client in trio worker threads, and
printd's own `RedisLink` (printd/cluster/redis_client.py). Figures: publish -> subscriber
round trip (p50/p99 over N messages, one at a time) and pipelined SETs per second.

    .venv/bin/pip install coredis redis   # the candidates (not dependencies of printd)
    .venv/bin/python benchmarks/redis_clients.py --port 6379 --messages 2000 --pipeline 20000

Run it on a quiet machine; it uses keys under `bench:` and channel `bench:ch`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from printd.cluster.redis_client import RedisLink
from printd.cluster.target import parse_redis_url


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def report(name: str, rtts: list[float], n_pipe: int, pipe_s: float) -> dict[str, Any]:
    row = {
        "client": name,
        "pubsub_p50_ms": round(statistics.median(rtts) * 1000, 3),
        "pubsub_p99_ms": round(pct(rtts, 0.99) * 1000, 3),
        "pipelined_sets_per_s": round(n_pipe / pipe_s),
    }
    print(row, flush=True)
    return row


async def bench_own(port: int, messages: int, n_pipe: int) -> dict[str, Any]:
    got = trio.Event()
    box: list[Callable[[], None]] = []

    def on_message(channel: bytes, data: bytes) -> None:
        got.set()

    link = RedisLink(parse_redis_url(f"redis://127.0.0.1:{port}/0"), on_message=on_message)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await link.wait_up()
        link.subscribe(b"bench:ch")
        await trio.sleep(0.2)
        rtts = []
        for _ in range(messages):
            got = trio.Event()
            t = time.perf_counter()
            await link.execute("PUBLISH", "bench:ch", "x" * 200)
            await got.wait()
            rtts.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, n_pipe, 1000):
            await link.pipeline([("SET", f"bench:{j}", "v") for j in range(i, i + 1000)])
        pipe_s = time.perf_counter() - t
        nursery.cancel_scope.cancel()
    del box
    return report("printd RedisLink", rtts, n_pipe, pipe_s)


async def bench_coredis(port: int, messages: int, n_pipe: int) -> dict[str, Any]:
    import coredis

    client = coredis.Redis(host="127.0.0.1", port=port)
    async with client:
        async with client.pubsub(channels=["bench:ch"], ignore_subscribe_messages=True) as ps:
            await trio.sleep(0.2)
            rtts = []
            it = ps.__aiter__()
            for _ in range(messages):
                t = time.perf_counter()
                await client.publish("bench:ch", "x" * 200)
                await it.__anext__()
                rtts.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, n_pipe, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for j in range(i, i + 1000):
                    pipe.set(f"bench:{j}", "v")
        pipe_s = time.perf_counter() - t
    return report("coredis", rtts, n_pipe, pipe_s)


async def bench_redispy_threads(port: int, messages: int, n_pipe: int) -> dict[str, Any]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("bench:ch")
    token = trio.lowlevel.current_trio_token()
    got: list[trio.Event] = [trio.Event()]
    stop = threading.Event()

    def reader() -> None:  # the pub/sub thread hands messages to trio
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg is not None:
                trio.from_thread.run_sync(got[0].set, trio_token=token)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    await trio.sleep(0.2)
    rtts = []
    for _ in range(messages):
        got[0] = trio.Event()
        t = time.perf_counter()
        await trio.to_thread.run_sync(client.publish, "bench:ch", "x" * 200)
        await got[0].wait()
        rtts.append(time.perf_counter() - t)

    def pipe_batch(i: int) -> None:
        pipe = client.pipeline(transaction=False)
        for j in range(i, i + 1000):
            pipe.set(f"bench:{j}", "v")
        pipe.execute()

    t = time.perf_counter()
    for i in range(0, n_pipe, 1000):
        await trio.to_thread.run_sync(pipe_batch, i)
    pipe_s = time.perf_counter() - t
    stop.set()
    thread.join()
    return report("redis-py sync + threads", rtts, n_pipe, pipe_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--pipeline", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.runs):
        for fn in (bench_own, bench_coredis, bench_redispy_threads):
            trio.run(fn, args.port, args.messages, args.pipeline)


if __name__ == "__main__":
    main()
