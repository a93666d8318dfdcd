"""Holding a long poll: one waiter per slot, the newest supersedes, released with a reason or at its deadline.

A `HoldSlot` (a Bayeux session, a signed-in agent of the Huawei gateway) holds at most one `Held`
waiter. Parking a new one releases the one already there as SUPERSEDED; `unpark(reason)` releases it
for any reason its owner names (events arrived, the session ended, the server stops); `HoldTimers`
releases it as TIMEOUT when its hold time has passed. Releasing calls the waiter's `release(reason)`:
the broker's exchange answers a held /meta/connect from there, and `hold()` turns it into an await for
a request handler that waits for its own answer.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

_monotonic = time.monotonic

# Why a held waiter was released, besides the reasons its owner gives `unpark`.
TIMEOUT = "timeout"          # the hold time passed
SUPERSEDED = "superseded"    # a newer waiter of the same slot replaced it
ABANDONED = "abandoned"      # its client went away

Release = Callable[[str], None]


class Held:
    """A waiter held in a slot until it is released, and where its deadline is kept meanwhile."""

    __slots__ = ("release", "holds", "due_tick")

    def __init__(self, release: Release | None = None) -> None:
        """`release(reason)` is called once it is released; None for a subclass that overrides `finish`."""
        self.release = release
        self.holds: HoldTimers | None = None  # where its timeout is kept, while it is held
        self.due_tick = 0  # the HoldTimers bucket it is in

    def finish(self, reason: str) -> None:
        """Stop holding, and have whoever waits on it answer."""
        self.cancel_timeout()
        self.release(reason)  # type: ignore[misc]

    def cancel_timeout(self) -> None:
        if self.holds is not None:
            self.holds.remove(self)


class HoldSlot:
    """Where one waiter is held: the newest waiter wins."""

    __slots__ = ("parked",)

    def __init__(self) -> None:
        self.parked: Held | None = None

    def park(self, held: Held, timeout: float, holds: HoldTimers, loop: asyncio.AbstractEventLoop) -> None:
        """Hold `held` for at most `timeout` seconds; a waiter already held is released as SUPERSEDED."""
        if self.parked is not None:
            self.unpark(SUPERSEDED)
        self.parked = held
        holds.add(held, self, timeout, loop)

    def unpark(self, reason: str) -> None:
        """Release the held waiter, if any, for `reason`."""
        parked = self.parked
        if parked is None:
            return
        self.parked = None
        parked.finish(reason)


class HoldTimers:
    """The deadlines of held waiters, on one coarse clock instead of an event-loop timer each.

    Thousands of connects are parked and released every second; a loop timer per park (made,
    then cancelled) was a tenth of the broker's own work per long-poll cycle. Here a timeout
    is a dict entry in the bucket of its `tick`, and one loop timer runs while any is held.
    A waiter times out up to one tick late, never early."""

    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self._buckets: dict[int, dict[Held, HoldSlot]] = {}
        self._due: list[int] = []  # heap of the ticks that have a bucket
        self._timer: asyncio.TimerHandle | None = None

    def add(self, held: Held, slot: HoldSlot, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        due_at = int((_monotonic() + timeout) / self.tick) + 1
        bucket = self._buckets.get(due_at)
        if bucket is None:
            bucket = self._buckets[due_at] = {}
            heapq.heappush(self._due, due_at)
        bucket[held] = slot
        held.holds, held.due_tick = self, due_at
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.tick, self._expire, loop)

    def remove(self, held: Held) -> None:
        held.holds = None
        bucket = self._buckets.get(held.due_tick)
        if bucket is not None:
            bucket.pop(held, None)  # an emptied bucket stays until its tick comes: no heap removal

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = int(_monotonic() / self.tick)
        due, buckets = self._due, self._buckets
        while due and due[0] <= now:
            for held, slot in buckets.pop(heapq.heappop(due)).items():
                held.holds = None
                if slot.parked is held:
                    slot.unpark(TIMEOUT)
        self._timer = loop.call_at(loop.time() + self.tick, self._expire, loop) if due else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def hold(slot: HoldSlot, timeout: float, holds: HoldTimers) -> str:
    """Wait in `slot` for at most `timeout` seconds and return why the wait ended: the reason given to
    `slot.unpark`, SUPERSEDED (a newer waiter took the slot) or TIMEOUT. When the waiting task is
    cancelled (its client went away) the slot is emptied, if it still holds this waiter, and the
    cancellation goes on."""
    loop = asyncio.get_running_loop()
    released: asyncio.Future[str] = loop.create_future()

    def release(reason: str) -> None:
        if not released.done():  # a cancelled wait's future is done already
            released.set_result(reason)

    held = Held(release)
    slot.park(held, timeout, holds, loop)
    try:
        return await released
    finally:
        if slot.parked is held:  # still held: the wait was cancelled
            slot.unpark(ABANDONED)


__all__ = ["ABANDONED", "SUPERSEDED", "TIMEOUT", "Held", "HoldSlot", "HoldTimers", "Release", "hold"]
