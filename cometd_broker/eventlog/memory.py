"""MemoryEventLog: the in-process store, for tests and brokers that need no restart safety.

Every method completes without awaiting, so on one event loop each call is
atomic and no lock is needed.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .base import (
    KEEP_ALL,
    UNKNOWN_BOUNDS,
    Bounds,
    Event,
    EventLogClosed,
    Retention,
    T,
    as_payloads,
    check_limit,
    new_epoch,
)


class _Stream:
    """One stream's retained events as plain (id, timestamp, payload) tuples: the garbage
    collector stops tracking a tuple of atomic values, so a log of millions of events adds
    nothing to full collections, as Event objects would. They become Events when read."""

    __slots__ = ("events", "latest", "last_ts")

    def __init__(self, max_count: int | None) -> None:
        # maxlen enforces max_count on append, so memory never exceeds it between trims.
        self.events: deque[tuple[int, float, bytes]] = deque(maxlen=max_count)
        self.latest = 0
        self.last_ts = 0.0

    @property
    def oldest(self) -> int:
        return self.events[0][0] if self.events else self.latest + 1


class MemoryEventLog:
    def __init__(self, retention: Retention = KEEP_ALL, *, clock: Callable[[], float] = time.time) -> None:
        self.retention = retention
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._epoch = new_epoch()  # the log lives as long as this object: a restart makes a new one
        self._closed = False

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        self._check_open()
        payloads = as_payloads(payloads)
        if not payloads:
            return []
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Stream(self.retention.max_count)
        now = self._clock()
        state.last_ts = ts = now if now > state.last_ts else state.last_ts
        first = state.latest + 1
        events = state.events
        for offset, payload in enumerate(payloads):
            # A right-sized copy: orjson's results keep ~4 KB allocated whatever their length, and
            # the log holds up to retention_count of them per stream.
            events.append((first + offset, ts, bytes(memoryview(payload))))
        state.latest = first + len(payloads) - 1
        return [first] if len(payloads) == 1 else list(range(first, state.latest + 1))

    async def append_many(self, events: Sequence[tuple[str, bytes]]) -> list[int]:
        self._check_open()
        payloads = as_payloads([payload for _, payload in events])
        ids = []
        for (stream, _), payload in zip(events, payloads, strict=True):
            ids += await self.append(stream, [payload])  # never suspends: the whole call stays atomic
        return ids

    async def append_many_then(self, events: Sequence[tuple[str, bytes]], then: Callable[[list[int]], T]) -> T:
        return then(await self.append_many(events))  # no suspension in between: in the same loop turn

    def reap(self) -> None:
        """Nothing is ever owed: appends are recorded and run `then` at once."""

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        self._check_open()
        check_limit(limit)
        state = self._streams.get(stream)
        if state is None or not state.events:
            return []
        # Retained ids are contiguous, so the position of id `after + 1` is arithmetic.
        start = max(0, after + 1 - state.oldest)
        return [Event(stream, *event) for event in itertools.islice(state.events, start, start + limit)]

    async def bounds(self, stream: str) -> Bounds:
        self._check_open()
        state = self._streams.get(stream)
        if state is None:
            return UNKNOWN_BOUNDS
        return Bounds(state.oldest, state.latest)

    async def epoch(self) -> str:
        self._check_open()
        return self._epoch

    async def bounds_with_epoch(self, stream: str) -> tuple[str, Bounds]:
        return await self.epoch(), await self.bounds(stream)

    async def streams(self) -> list[str]:
        self._check_open()
        return sorted(self._streams)

    async def read_range(
        self,
        *,
        streams: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        after: tuple[float, str, int] | None = None,
        limit: int,
    ) -> list[Event]:
        self._check_open()
        check_limit(limit)
        names = sorted(self._streams) if streams is None else sorted(set(streams) & self._streams.keys())

        def selected(name: str) -> Iterator[Event]:
            for stored in self._streams[name].events:
                event = Event(name, *stored)
                if since is not None and event.timestamp < since:
                    continue
                if until is not None and event.timestamp >= until:
                    return  # timestamps are non-decreasing within a stream
                if after_id is not None and event.id <= after_id:
                    continue
                if after is not None and event.sort_key <= after:
                    continue
                yield event

        # Each stream is already sorted by sort_key, so a lazy merge reads only what `limit` needs.
        merged = heapq.merge(*(selected(name) for name in names), key=lambda event: event.sort_key)
        return list(itertools.islice(merged, limit))

    async def trim(self, now: float) -> int:
        self._check_open()
        max_age = self.retention.max_age
        if max_age is None:
            return 0  # max_count is already enforced by the deques' maxlen
        cutoff = now - max_age
        dropped = 0
        for state in self._streams.values():
            events = state.events
            while events and events[0][1] < cutoff:
                events.popleft()
                dropped += 1
        return dropped

    async def close(self) -> None:
        self._closed = True
        self._streams.clear()

    def stats(self) -> dict[str, Any]:
        """For metrics and readiness: appends complete at once, so there is never a lag."""
        problem = "event log is closed" if self._closed else None
        return {"store": "memory", "up": problem is None, "problem": problem, "pending": 0,
                "oldest_pending_seconds": 0.0}

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosed("event log is closed")
