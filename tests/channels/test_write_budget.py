"""A state store bounds what is queued and not stored yet, in writes and in bytes: while the disk is stuck,
callers wait (on the loop) instead of piling whole documents into memory."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from channels.store import StateStore
from channels.write_budget import WriteBudget


async def test_callers_wait_in_order_past_either_bound() -> None:
    budget = WriteBudget(max_writes=3, max_bytes=100)
    await budget.acquire(60)
    await budget.acquire(30)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    big = asyncio.create_task(take("big", 50))  # 60 + 30 + 50 > 100 bytes
    small = asyncio.create_task(take("small", 1))  # would fit, but comes after: it waits its turn
    await asyncio.sleep(0)
    assert order == [] and budget.writes == 2
    budget.release(60)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and (budget.writes, budget.bytes) == (3, 81)
    blocked = asyncio.create_task(take("fourth", 1))  # the write count is full
    await asyncio.sleep(0)
    assert order == ["big", "small"]
    budget.release(1)
    await blocked
    assert order[-1] == "fourth"


async def test_a_write_larger_than_the_bound_goes_through_alone() -> None:
    budget = WriteBudget(max_writes=10, max_bytes=100)
    await budget.acquire(10)
    huge = asyncio.create_task(budget.acquire(1000))
    await asyncio.sleep(0)
    assert not huge.done()
    budget.release(10)
    await huge
    assert (budget.writes, budget.bytes) == (1, 1000)


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    budget = WriteBudget(max_writes=1, max_bytes=100)
    await budget.acquire(50)
    first = asyncio.create_task(budget.acquire(50))
    second = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    budget.release(50)
    await second
    assert (budget.writes, budget.bytes) == (1, 50)


async def test_a_stuck_disk_holds_back_callers_once_the_bytes_are_queued(tmp_path) -> None:
    """Another connection holds the write lock: writes of 100 KiB documents queue until the store holds
    its byte bound, then the next caller waits; once the disk is free every write is stored, in order."""
    path = tmp_path / "state.db"
    store = StateStore(path, max_pending_bytes=1_000_000)
    await store.apply([("k", "warm", {})])  # the writer thread is up
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    document = {"text": "x" * 100_000}
    queued: list[asyncio.Future[None]] = []

    async def write(n: int) -> None:
        queued.append(await store.submit([("k", f"doc{n}", {**document, "n": n})]))

    writers = [asyncio.create_task(write(n)) for n in range(30)]
    await asyncio.sleep(0.2)
    assert 8 <= len(queued) <= 10, len(queued)  # about 1 MB of the 3 MB offered is held; the rest waits
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.wait_for(asyncio.gather(*writers), 30)
    await asyncio.wait_for(asyncio.gather(*queued), 30)
    stored = store.load("k")
    assert [stored[f"doc{n}"]["n"] for n in range(30)] == list(range(30))
    await store.close()
