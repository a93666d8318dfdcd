"""Coalescer (the Redis engine's group commit), without Redis: what is submitted together is sent
together, in order, and each caller gets its own result or its batch's failure."""

from __future__ import annotations

import asyncio

import pytest

from cometd_broker.engine.coalesce import Coalescer


class Sender:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [item * 10 for item in items]


async def test_submits_of_one_turn_are_one_batch_and_later_ones_wait_for_it() -> None:
    send = Sender()
    coalescer: Coalescer[int, int] = Coalescer(send, max_batch=3)
    send.gate.clear()
    first = [coalescer.submit(n) for n in range(5)]
    await asyncio.sleep(0)  # the first batch is on the wire ...
    later = [coalescer.submit(n) for n in (5, 6)]  # ... these go out after it, together
    send.gate.set()
    assert await asyncio.gather(*first, *later) == [0, 10, 20, 30, 40, 50, 60]
    assert send.batches == [[0, 1, 2], [3, 4, 5], [6]]  # max_batch bounds each call, order is kept


async def test_a_failed_batch_fails_each_of_its_callers_only() -> None:
    send = Sender()
    coalescer: Coalescer[int, int] = Coalescer(send)
    send.fail = ValueError("down")
    failed = [coalescer.submit(n) for n in range(3)]
    for future in failed:
        with pytest.raises(ValueError, match="down"):
            await future
    send.fail = None
    assert await coalescer.submit(7) == 70


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    send = Sender()
    coalescer: Coalescer[int, int] = Coalescer(send)
    gone, kept = coalescer.submit(1), coalescer.submit(2)
    gone.cancel()
    assert await kept == 20


async def test_close_fails_what_is_in_flight_and_queued() -> None:
    send = Sender()
    coalescer: Coalescer[int, int] = Coalescer(send)
    send.gate.clear()
    in_flight = coalescer.submit(1)
    await asyncio.sleep(0)
    await coalescer.close(RuntimeError("stopping"))
    with pytest.raises(RuntimeError, match="stopping"):
        await in_flight


async def test_weighted_items_fill_a_batch_by_weight_and_a_heavy_one_goes_alone() -> None:
    send = Sender()
    coalescer: Coalescer[int, int] = Coalescer(send, max_batch=5, weight=lambda n: n)
    futures = [coalescer.submit(n) for n in (2, 3, 1, 7, 4)]
    assert await asyncio.gather(*futures) == [20, 30, 10, 70, 40]
    assert send.batches == [[2, 3], [1], [7], [4]]  # 2+3 fill it; 1+7 would not fit; 7 alone, unsplit
