"""The shared long-poll hold (poll_hold): one waiter per slot, the newest supersedes, a release names its
reason, the deadline is kept, and a waiter whose client went away leaves its slot empty."""

from __future__ import annotations

import asyncio
import time

import pytest

from cometd_broker.poll_hold import SUPERSEDED, TIMEOUT, Held, HoldSlot, HoldTimers, hold

TICK = 0.01
LONG = 5.0  # a hold time no test waits for


@pytest.fixture
def holds():
    timers = HoldTimers(tick=TICK)
    yield timers
    timers.close()


async def parked(slot: HoldSlot, previous: Held | None = None) -> Held:
    """The waiter `slot` holds once a task parked there (a newer one than `previous`)."""
    for _ in range(100):
        if slot.parked is not None and slot.parked is not previous:
            return slot.parked
        await asyncio.sleep(0)
    raise AssertionError("nothing was parked")


async def test_a_waiter_is_released_with_the_reason_its_owner_gives(holds):
    slot = HoldSlot()
    waiting = asyncio.ensure_future(hold(slot, LONG, holds))
    await parked(slot)
    slot.unpark("events")
    assert await asyncio.wait_for(waiting, 1) == "events"
    assert slot.parked is None


async def test_a_newer_waiter_supersedes_the_one_held(holds):
    slot = HoldSlot()
    first = asyncio.ensure_future(hold(slot, LONG, holds))
    held_first = await parked(slot)
    second = asyncio.ensure_future(hold(slot, LONG, holds))
    await parked(slot, held_first)
    assert await asyncio.wait_for(first, 1) == SUPERSEDED
    assert not second.done()
    slot.unpark("events")  # the newer one is the slot's now
    assert await asyncio.wait_for(second, 1) == "events"


async def test_a_waiter_times_out_never_early_and_at_most_a_tick_or_two_late(holds):
    slot = HoldSlot()
    started = time.monotonic()
    assert await asyncio.wait_for(hold(slot, 0.05, holds), 1) == TIMEOUT
    assert 0.05 <= time.monotonic() - started < 0.05 + 3 * TICK + 0.05  # scheduling slack on a busy machine
    assert slot.parked is None


async def test_a_released_waiter_is_not_timed_out_later(holds):
    slot = HoldSlot()
    released: list[str] = []
    slot.park(Held(released.append), 0.02, holds, asyncio.get_running_loop())
    slot.unpark("events")
    await asyncio.sleep(0.06)
    assert released == ["events"]


async def test_cancelling_a_wait_empties_its_slot_and_drops_its_deadline(holds):
    slot = HoldSlot()
    waiting = asyncio.ensure_future(hold(slot, 0.02, holds))
    held = await parked(slot)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slot.parked is None
    assert held.holds is None  # no longer among the timers
    await asyncio.sleep(0.05)  # its deadline passes: nothing else happens


async def test_cancelling_a_superseded_wait_leaves_the_newer_one_held(holds):
    slot = HoldSlot()
    first = asyncio.ensure_future(hold(slot, LONG, holds))
    held_first = await parked(slot)
    second = asyncio.ensure_future(hold(slot, LONG, holds))
    held_second = await parked(slot, held_first)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert slot.parked is held_second
    slot.unpark("events")
    assert await asyncio.wait_for(second, 1) == "events"

