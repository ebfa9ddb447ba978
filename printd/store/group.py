"""Group commit: write calls that arrive while others are committing share the next transaction.

A kitchen rush sends thousands of small writes a second (a job accepted, dispatched, acked,
printed); each in its own transaction costs a worker-thread hand-off, a BEGIN/COMMIT and, on
PostgreSQL, a WAL flush. Here a caller that finds no free committer queues its call, and the next
committer to start takes everything queued, up to `MAX_BATCH`, into one transaction. Nothing
waits on purpose: an idle store commits a lone call at once, a busy one commits bigger groups.

A grouped call must raise its domain errors (StoreError subclasses) before it writes anything:
the error is handed to that caller alone and the others' work commits. Any other failure (the
driver's, or a constraint) rolls the group back; a group of several is then run again one call
per transaction, so only the call at fault fails. A group whose outcome is unknown (the
committing task was cancelled, the database went away mid-COMMIT) fails every call in it with
StoreUnavailable, exactly what a single call's caller already meets when its reply is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

from printd.store.base import StoreError, StoreUnavailable

T = TypeVar("T")
Work = Callable[[Any], Any]  # fn(tx) -> result, run inside the group's transaction

#: At most this many calls share one transaction (bounds its duration and its lock hold time).
MAX_BATCH = 256


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: StoreError) -> None:
        self.error = error


class _Call(Generic[T]):
    __slots__ = ("fn", "outcome", "taken")

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.outcome: Any = _PENDING
        self.taken = False


_PENDING = object()


def _attempt(fn: Work, tx: Any) -> Any:
    try:
        return fn(tx)
    except StoreError as exc:  # raised before it wrote (the contract above): its own outcome
        return _Failed(exc)


class GroupCommit:
    """Runs grouped write calls through `execute` (one transaction per call of it), at most
    `width` transactions at a time."""

    def __init__(self, execute: Callable[[Work], Awaitable[Any]], *, width: int = 1) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self._execute = execute
        self._width = width
        self._queue: list[_Call[Any]] = []
        self._running = 0
        self._done = trio.Event()
        self.groups = 0  # transactions run for groups (for tests and metrics)
        self.grouped = 0  # calls they carried

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(tx)` in a shared write transaction; its result, or its StoreError raised."""
        call: _Call[T] = _Call(fn)
        self._queue.append(call)
        try:
            while call.outcome is _PENDING:
                if not call.taken and self._running < self._width:
                    await self._commit()
                else:
                    await self._done.wait()
        except BaseException:
            if not call.taken:
                self._queue.remove(call)
            raise
        outcome = call.outcome
        if isinstance(outcome, _Failed):
            raise outcome.error
        return outcome

    async def _commit(self) -> None:
        calls, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        for call in calls:
            call.taken = True
        self._running += 1
        try:
            await self._commit_group(calls)
        finally:
            for call in calls:
                if call.outcome is _PENDING:  # cancelled mid-COMMIT: nobody knows
                    call.outcome = _Failed(StoreUnavailable("store call outcome unknown: cancelled"))
            self._running -= 1
            done, self._done = self._done, trio.Event()
            done.set()

    async def _commit_group(self, calls: list[_Call[Any]]) -> None:
        fns = [call.fn for call in calls]
        self.groups += 1
        self.grouped += len(calls)
        try:
            outcomes = await self._execute(lambda tx: [_attempt(fn, tx) for fn in fns])
        except StoreUnavailable as exc:
            for call in calls:
                call.outcome = _Failed(exc)
            return
        except StoreError as exc:
            if len(calls) == 1:
                calls[0].outcome = _Failed(exc)
                return
            for call in calls:  # one of them is at fault: each alone, in its own transaction
                try:
                    call.outcome = await self._execute(call.fn)
                except StoreError as alone:
                    call.outcome = _Failed(alone)
            return
        for call, outcome in zip(calls, outcomes, strict=True):
            call.outcome = outcome
