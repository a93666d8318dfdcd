"""How much a state store lets callers queue before it has stored it: a count of writes and their bytes.

The engine queues a write per operation without waiting for the ones before it to commit, so while the
disk (or Redis) is slow, writes pile up; each carries whole documents (an interaction with its whole
transcript), so a count alone would let a slow disk hold gigabytes. Past either bound, `acquire` waits,
on the loop and without blocking it, in the order callers came; a write larger than the byte bound
still goes through once nothing else is queued, so no single write can wait forever.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

MAX_PENDING = 1024  # writes queued and not stored yet
MAX_PENDING_BYTES = 64 * 1024 * 1024  # their encoded documents


class WriteBudget:
    """`acquire(size)` before queueing a write of `size` bytes, `release(size)` once it is settled."""

    def __init__(self, max_writes: int = MAX_PENDING, max_bytes: int = MAX_PENDING_BYTES) -> None:
        if max_writes < 1 or max_bytes < 1:
            raise ValueError("a write budget needs room for at least one write and one byte")
        self.max_writes, self.max_bytes = max_writes, max_bytes
        self.writes = 0  # queued and not settled
        self.bytes = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def waiting(self) -> int:
        """Callers waiting for room."""
        return sum(1 for granted, _ in self._waiters if not granted.done())

    def pending(self) -> dict[str, int]:
        """What a store's `stats()` reports of what waits for it now."""
        return {"pending_writes": self.writes, "pending_bytes": self.bytes, "waiting": self.waiting}

    async def admit(self, size: int, check_open: Callable[[], None]) -> None:
        """`acquire`, then `check_open()` again (the store may have closed while the caller waited for
        room): if it raises, the room is given back."""
        await self.acquire(size)
        try:
            check_open()
        except BaseException:
            self.release(size)
            raise

    def _fits(self, size: int) -> bool:
        return self.writes == 0 or (self.writes < self.max_writes and self.bytes + size <= self.max_bytes)

    async def acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self._take(size)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((granted, size))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted, but its caller is gone
                self.release(size)
            else:
                self._grant()  # it may have been the head that kept others waiting
            raise

    def release(self, size: int) -> None:
        self.writes -= 1
        self.bytes -= size
        self._grant()

    def _take(self, size: int) -> None:
        self.writes += 1
        self.bytes += size

    def _grant(self) -> None:
        """Let in waiters in order while the head fits (one that does not keeps its place)."""
        while self._waiters:
            granted, size = self._waiters[0]
            if granted.done():  # its caller was cancelled
                self._waiters.popleft()
                continue
            if not self._fits(size):
                return
            self._waiters.popleft()
            self._take(size)
            granted.set_result(None)


def size_of(rows: list[tuple[str, str, bytes | None]]) -> int:
    """The bytes a write holds while queued: its keys and documents."""
    return sum(len(kind) + len(key) + (len(body) if body is not None else 0) for kind, key, body in rows)
