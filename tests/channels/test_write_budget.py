"""A state store bounds what is queued and not stored yet, in writes and in bytes: while the disk is stuck,
callers wait (on the loop) instead of piling whole documents into memory."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from gws_stack import served_center

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


async def test_a_flood_while_the_state_file_is_locked_leaves_health_fast_and_shows_in_metrics(aiohttp_client,
                                                                                              tmp_path) -> None:
    """Another connection holds the state file's write lock for 1.5 s while 40 customers write in at once,
    each with a message at the length limit: /health keeps answering at once, /metrics shows the writes
    waiting for the disk, and once the lock is gone every customer gets its answer and is stored."""
    import time

    path = tmp_path / "state.db"
    center = await served_center(aiohttp_client, path)
    client, config, media = center.client, center.config, center.media

    async def customer(n: int) -> int:
        body = {"nickname": f"P{n}", "text": "x" * config.interaction_limits.max_text}
        async with client.post("/api/v2/media/sms/interactions", json=body, headers=media) as response:
            return response.status

    assert await customer(-1) == 200  # the writer thread is up
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(1.5, blocker.execute, "COMMIT")
    flood = [asyncio.create_task(customer(n)) for n in range(40)]
    slowest, pending = 0.0, 0.0
    for _ in range(10):
        started = time.monotonic()
        async with client.get("/health") as response:
            assert response.status == 200
        slowest = max(slowest, time.monotonic() - started)
        async with client.get("/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("gws_state_pending_writes "):
                    pending = max(pending, float(line.split()[1]))
        await asyncio.sleep(0.1)
    assert slowest < 0.5, slowest  # the loop never waited for the disk
    assert pending >= 1  # the stall is visible to an operator
    assert await asyncio.wait_for(asyncio.gather(*flood), 15) == [200] * 40
    blocker.close()
    stored = sqlite3.connect(path).execute("SELECT COUNT(*) FROM documents WHERE kind = 'interaction'").fetchone()
    assert stored[0] == 41
