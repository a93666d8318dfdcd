"""JobThread: one thread that runs jobs in the order they were submitted, many at a time (group commit).

What the SQLite event log's writer and the contact-center state store share (DESIGN.md rule 4: nothing
on the loop waits on a disk). The loop submits a job and awaits a future of its own; the thread takes
every job queued since it last looked and hands them to its owner's `run`, which commits them together
and hands the outcome to the loop through a `LoopHandoff`: one `call_soon_threadsafe` per loop and batch,
and settled sooner when the loop's owner reaps as requests come in.

The thread is woken only when it is idle, so a job that reaches an idle thread starts at once (not a
loop turn later), and jobs submitted while it works share its next batch without a wake-up each.

Stopping runs every job submitted before `stop`, refuses later ones, and hands the owner, on the thread
and after its last batch, whatever was never run (none, unless `run` raised) to fail, so that no
future is stranded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger("cometd_broker")

J = TypeVar("J")
T = TypeVar("T")


class JobThread(Generic[J]):
    """Runs `run(jobs)` on its thread for the jobs submitted, in order; `on_exit(left)` once, at the end."""

    def __init__(self, name: str, run: Callable[[list[J]], None], on_exit: Callable[[list[J]], None]) -> None:
        self._run_jobs = run
        self._on_exit = on_exit
        self._jobs: deque[J] = deque()  # submitted, not taken yet; guarded by _lock
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._idle = False  # the thread waits on _arrived: the next job must wake it
        self._stopping = False
        self._exited = False
        self._exit_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.failure: BaseException | None = None  # what `run` raised, which ended the thread
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def native_id(self) -> int | None:
        """The OS's id of the thread once started (for per-thread CPU accounting, as bench/cycle.py does)."""
        return self._thread.native_id

    @property
    def queued(self) -> int:
        """Jobs submitted and not taken by the thread yet."""
        return len(self._jobs)

    @property
    def idle(self) -> bool:
        """The thread waits for a job (False while it runs a batch, or before it first looked)."""
        return self._idle

    def submit(self, job: J) -> bool:
        """Queue `job`, waking the thread if it is idle; False (nothing queued) once stopping or ended."""
        with self._lock:
            if self._stopping or self._exited:
                return False
            self._jobs.append(job)
            if self._idle:
                self._idle = False
                self._arrived.notify()
            return True

    def take(self, timeout: float) -> list[J]:
        """On the thread, for an owner that lingers for more: the jobs queued now, waiting up to `timeout`
        seconds for one if there is none ([] when none came, or the thread is stopping)."""
        with self._lock:
            if not self._jobs and not self._stopping:
                self._idle = True
                self._arrived.wait(timeout)
                self._idle = False
            jobs = list(self._jobs)
            self._jobs.clear()
        return jobs

    async def stop(self) -> None:
        """Run every job submitted so far, then end the thread; later submits are refused."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._exited:
                return
            self._exit_waiters.append((loop, waiter))
            self._stopping = True
            self._arrived.notify()
        if not self.started:  # never started: it runs nothing and ends
            self.start()
        await asyncio.shield(waiter)
        self._thread.join()

    def stop_now(self) -> None:
        """`stop` for code with no loop running: blocks until the thread has ended."""
        with self._lock:
            self._stopping = True
            self._arrived.notify()
        if not self.started:
            self.start()
        self._thread.join()

    def _main(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._jobs and not self._stopping:
                        self._idle = True
                        self._arrived.wait()
                    self._idle = False
                    if not self._jobs:  # stopping, and everything submitted before it has run
                        break
                    jobs = list(self._jobs)
                    self._jobs.clear()
                self._run_jobs(jobs)
        except Exception as exc:
            # Not re-raised: logged here, and the owner reports it to every waiter and every later call.
            self.failure = exc
            log.exception("%s thread failed", self._thread.name)
        finally:
            with self._lock:  # from here on every submit is refused: nothing can be stranded
                self._exited = True
                left = list(self._jobs)
                self._jobs.clear()
                waiters, self._exit_waiters = self._exit_waiters, []
            try:
                self._on_exit(left)
            except Exception:  # the waiters below must still hear of the end, or stop() never returns
                log.exception("%s thread failed while ending", self._thread.name)
            for loop, waiter in waiters:
                try:
                    loop.call_soon_threadsafe(lambda w=waiter: w.done() or w.set_result(None))
                except RuntimeError:
                    pass  # the loop is closed: nobody waits


class LoopHandoff(Generic[T]):
    """What a thread hands to the loops waiting for it, settled on each loop in the order handed over.

    `post` (on the thread) queues an item for its loop and schedules `reap` there. `reap` (on a loop) runs
    `settle` on every item queued for that loop so far. Why not only the scheduled call: on a saturated
    loop it runs once the turn's other callbacks are done (a thousand long-poll reconnects, say), so an
    outcome the thread had early in the turn would be settled a whole turn late; the broker reaps as each
    batch of requests comes in (`Broker.reap`), which settles it within the turn. Deque appends and pops
    are atomic, and only a loop's own `reap` pops its queue."""

    def __init__(self, settle: Callable[[T], None]) -> None:
        self._settle = settle
        self._queues: dict[asyncio.AbstractEventLoop, deque[T]] = {}

    def post(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """From the thread: queue `item` for `loop` and schedule a `reap` there."""
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues.setdefault(loop, deque())
        queue.append(item)
        try:
            loop.call_soon_threadsafe(self.reap)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def post_by_loop(self, items: Iterable[J], loop_of: Callable[[J], asyncio.AbstractEventLoop],
                     item: Callable[[list[J]], T]) -> None:
        """From the thread: `post(loop, item(the items of that loop))` for each loop of `items`."""
        by_loop: dict[asyncio.AbstractEventLoop, list[J]] = {}
        for one in items:
            by_loop.setdefault(loop_of(one), []).append(one)
        for loop, mine in by_loop.items():
            self.post(loop, item(mine))

    def reap(self) -> None:
        """On a loop: settle what was handed to it so far, in order (nothing, usually)."""
        queue = self._queues.get(asyncio.get_running_loop())
        while queue:
            self._settle(queue.popleft())
