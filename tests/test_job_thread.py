"""JobThread: the writer thread the SQLite event log and the contact-center state store share."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from bayeux_helpers import hold_loop_until

from cometd_broker.job_thread import JobThread, LoopHandoff


class Owner:
    """Records the batches its thread runs; `gate` holds the thread inside a batch until set."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.left: list[object] | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on
        self.thread: JobThread[object] = JobThread("test-writer", self.run, self.on_exit)

    def run(self, jobs: list[object]) -> None:
        self.batches.append(jobs)
        self.gate.wait(5)
        if self.fail_on in jobs:
            raise RuntimeError("disk full")

    def on_exit(self, left: list[object]) -> None:
        self.left = left


async def test_jobs_run_in_order_and_those_queued_while_it_works_share_a_batch() -> None:
    owner = Owner()
    owner.thread.start()
    owner.gate.clear()
    assert owner.thread.submit(1)
    hold_loop_until(lambda: owner.batches == [[1]])  # an idle thread takes a job at once
    for job in range(2, 6):
        assert owner.thread.submit(job)
    assert owner.thread.queued == 4
    owner.gate.set()
    hold_loop_until(lambda: len(owner.batches) == 2)
    assert owner.batches == [[1], [2, 3, 4, 5]]
    await owner.thread.stop()
    assert owner.left == [] and not owner.thread.alive


async def test_stop_runs_what_was_submitted_before_it_and_refuses_the_rest() -> None:
    owner = Owner()
    owner.thread.start()
    owner.gate.clear()
    owner.thread.submit("a")
    hold_loop_until(lambda: owner.batches)
    owner.thread.submit("b")
    stopping = asyncio.ensure_future(owner.thread.stop())
    await asyncio.sleep(0.05)
    assert not owner.thread.submit("late")
    owner.gate.set()
    await stopping
    assert [job for batch in owner.batches for job in batch] == ["a", "b"]
    assert owner.left == []
    await owner.thread.stop()  # again: returns at once


async def test_a_failing_run_ends_the_thread_and_hands_back_what_was_left(caplog) -> None:
    owner = Owner(fail_on="bad")
    owner.thread.start()
    owner.gate.clear()
    owner.thread.submit("bad")
    hold_loop_until(lambda: owner.batches)
    owner.thread.submit("next")
    with caplog.at_level("ERROR", logger="cometd_broker"):
        owner.gate.set()
        hold_loop_until(lambda: not owner.thread.alive)
    assert isinstance(owner.thread.failure, RuntimeError)
    assert owner.left == ["next"]  # never run: its owner fails it, nothing is stranded
    assert not owner.thread.submit("after")
    assert "test-writer thread failed" in caplog.text


async def test_stop_returns_even_when_the_owners_exit_fails(caplog) -> None:
    owner = Owner()

    def on_exit(left: list[object]) -> None:
        raise OSError("close failed")

    owner.thread = JobThread("test-writer", owner.run, on_exit)
    owner.thread.start()
    owner.thread.submit("a")
    with caplog.at_level("ERROR", logger="cometd_broker"):
        await asyncio.wait_for(owner.thread.stop(), 5)
    assert not owner.thread.alive
    assert "test-writer thread failed while ending" in caplog.text


async def test_a_thread_never_started_stops_cleanly() -> None:
    owner = Owner()
    await owner.thread.stop()
    assert owner.batches == [] and owner.left == []
    other = Owner()
    other.thread.stop_now()
    assert other.left == []


async def test_take_waits_for_more_jobs_up_to_its_timeout() -> None:
    seen: list[list[int]] = []

    def run(jobs: list[int]) -> None:
        seen.append(jobs + thread.take(0.5))  # an owner lingering for more, as batch_delay does

    thread: JobThread[int] = JobThread("linger", run, lambda left: None)
    thread.start()
    thread.submit(1)
    time.sleep(0.1)
    thread.submit(2)
    hold_loop_until(lambda: seen)
    assert seen == [[1, 2]]
    await thread.stop()


async def test_a_handoff_settles_each_loops_items_on_that_loop_in_order() -> None:
    loop = asyncio.get_running_loop()
    other = asyncio.new_event_loop()  # never runs: its items must not be settled here
    settled: list[tuple[str, list[int]]] = []
    handoff: LoopHandoff[tuple[str, list[int]]] = LoopHandoff(settled.append)
    done = asyncio.Event()

    def thread() -> None:
        handoff.post_by_loop([1, 2, 3], lambda item: other if item == 2 else loop, lambda mine: ("a", mine))
        handoff.post(loop, ("b", [4]))
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=thread).start()
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)  # the scheduled reaps have run
    assert settled == [("a", [1, 3]), ("b", [4])]
    other.close()


async def test_a_handoff_settles_at_the_first_reap_not_at_the_scheduled_one() -> None:
    # The loop is held in this turn (as a busy loop is) while the thread posts: the scheduled reap cannot
    # run yet, and a reap from within the turn settles the item there, once.
    loop = asyncio.get_running_loop()
    settled: list[int] = []
    handoff: LoopHandoff[int] = LoopHandoff(settled.append)
    poster = threading.Thread(target=handoff.post, args=(loop, 7))
    poster.start()
    poster.join()
    assert settled == []
    handoff.reap()
    assert settled == [7]
    await asyncio.sleep(0.01)  # the scheduled reap finds nothing left
    assert settled == [7]


@pytest.mark.parametrize("jobs", [0, 1])
async def test_submit_after_the_end_is_refused(jobs: int) -> None:
    owner = Owner()
    owner.thread.start()
    for job in range(jobs):
        owner.thread.submit(job)
    await owner.thread.stop()
    assert not owner.thread.submit("late")
