"""Coalescer: calls made in the same loop turn, or while a batch is in flight, go out as one batch.

Group commit for the Redis engine: every publish of a long-poll batch (and every publish made
while the previous round trip is on the wire) shares one script call, instead of one round trip
each. Batches go out one after another, in submission order, so per-stream order is kept; each
caller awaits its own future and gets its own result, or the exception of its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ..tasks import cancel_and_wait

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_batch: int = 500,
                 weight: Callable[[T], int] | None = None, name: str = "coalescer") -> None:
        self._send = send  # items -> one result per item, in order; raises for the whole batch
        self._max_batch = max_batch  # bounds one call's size (a Lua script blocks Redis while it runs)
        # An item's share of max_batch (a group of events counts each); an item heavier than
        # max_batch goes out alone, never split, so a group always shares one call.
        self._weight = weight
        self._name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed_error: Exception = RuntimeError(f"{name} stopped")  # close() says why

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue `item` for the next batch; the future completes with its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._task is None:
            # The task first runs after the callbacks already scheduled: the rest of this turn's
            # submits (a long-poll batch's publishes, started together) join the same batch.
            self._task = loop.create_task(self._drain(), name=self._name)
        return future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queue:
                taken = self._take()
                batch, self._queue = self._queue[:taken], self._queue[taken:]
                try:
                    results = await self._send([item for item, _ in batch])
                except Exception as exc:  # the batch's failure is each of its callers' failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                batch = []
        finally:
            self._task = None
            for _, future in batch:  # cancelled mid-send (close): its callers get close()'s error
                if not future.done():
                    future.set_exception(self._closed_error)

    def _take(self) -> int:
        """How many queued items the next call sends: up to max_batch by weight, at least one."""
        if self._weight is None:
            return self._max_batch
        total = 0
        for taken, (item, _) in enumerate(self._queue):
            total += self._weight(item)
            if total > self._max_batch:
                return max(taken, 1)
        return len(self._queue)

    async def close(self, error: Exception) -> None:
        """Stop sending: the batch in flight is cancelled, queued items fail with `error`."""
        self._closed_error = error
        task, self._task = self._task, None
        await cancel_and_wait(task)
        queued, self._queue = self._queue, []
        for _, future in queued:
            if not future.done():
                future.set_exception(error)
