"""SqliteWriter: the one thread that writes the SQLite event log, with group commit.

Why a thread: a commit waits for the disk (fsync of the WAL at checkpoints,
write() always), and the event loop must never wait for the disk. Why one
thread: SQLite allows one writer at a time anyway, and a single owner of the
per-stream id counters needs no lock to keep ids strictly increasing.

Appends queue here and wait on an asyncio future. The thread takes the first
queued append, keeps collecting for `batch_delay` seconds (or until
`max_batch` events), then commits them all in one transaction and resolves
every future: under load, many appends share one commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import EventLogClosed, Retention, as_payloads

log = logging.getLogger("cometd_broker.eventlog")

_INSERT_EVENT = "INSERT INTO events (stream, id, ts, payload) VALUES (?, ?, ?, ?)"
_SAVE_STREAM = (
    "INSERT INTO streams (stream, last_id, last_ts) VALUES (?, ?, ?) "
    "ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id, last_ts = excluded.last_ts"
)
_DROP_BY_COUNT = "DELETE FROM events WHERE stream = ? AND id <= ?"
_DROP_BY_AGE = "DELETE FROM events WHERE ts < ?"


@dataclass(slots=True, eq=False)
class _AppendJob:
    stream: str
    payloads: list[bytes]
    future: asyncio.Future[list[int]]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True, eq=False)
class _TrimJob:
    now: float
    future: asyncio.Future[int]
    loop: asyncio.AbstractEventLoop


class _Stop:
    """The sentinel that ends the thread once every job queued before it is done."""


_Job = _AppendJob | _TrimJob | _Stop


class SqliteWriter:
    """Owns the write connection, the id counters and the writer thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        retention: Retention,
        *,
        clock: Callable[[], float],
        batch_delay: float,
        max_batch: int,
        max_pending: int,
        name: str = "eventlog-sqlite-writer",
    ) -> None:
        if batch_delay < 0 or max_batch < 1 or max_pending < 1:
            raise ValueError("batch_delay must be >= 0, max_batch and max_pending >= 1")
        self._conn = conn
        self._retention = retention
        self._clock = clock
        self._batch_delay = batch_delay
        self._max_batch = max_batch
        # stream -> (last id ever assigned, last timestamp); loaded once, then owned by the thread.
        self._last: dict[str, tuple[int, float]] = {
            stream: (last_id, last_ts)
            for stream, last_id, last_ts in conn.execute("SELECT stream, last_id, last_ts FROM streams")
        }
        # The semaphore bounds queued jobs; the queue's one extra slot is for the stop sentinel,
        # so put_nowait can never fail and stop() never blocks.
        self._slots = asyncio.Semaphore(max_pending)
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_pending + 1)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False
        self._failure: BaseException | None = None
        self._exit_lock = threading.Lock()
        self._exited = False
        self._exit_waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self.commits = 0  # transactions committed; appends / commits is the group-commit factor
        # The event-log lag, for metrics: events appended but not yet committed, and when each queued
        # job was submitted (jobs are settled in submission order, so the oldest is first).
        self.pending_events = 0
        self._submitted: deque[float] = deque()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """What stopped the thread, if it failed."""
        return self._failure

    @property
    def oldest_pending_age(self) -> float:
        """Seconds the oldest job not yet committed has waited (0 when none waits)."""
        return time.monotonic() - self._submitted[0] if self._submitted else 0.0

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        job_payloads = as_payloads(payloads)
        if not job_payloads:
            self._check_open()
            return []
        return await self._submit(lambda fut, loop: _AppendJob(stream, job_payloads, fut, loop))

    async def trim(self, now: float) -> int:
        return await self._submit(lambda fut, loop: _TrimJob(now, fut, loop))

    async def stop(self) -> None:
        """Commit every job queued so far, then end the thread and close the connection."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._exit_lock:
            if not self._exited and self._exit_waiter is None:
                self._exit_waiter = (loop, waiter)
            elif self._exited:
                waiter.set_result(None)
            else:  # a concurrent stop() is already waiting: wait on its future
                waiter = self._exit_waiter[1]  # type: ignore[index]
        if not self._stopping:
            self._stopping = True
            if self._thread.is_alive() or not self._thread.ident:
                self._queue.put_nowait(_Stop())
            if not self._thread.ident:  # never started: run nothing, just close
                self._thread.start()
        await asyncio.shield(waiter)
        self._thread.join()

    async def _submit(self, make_job: Callable[[Any, asyncio.AbstractEventLoop], _Job]) -> Any:
        self._check_open()
        await self._slots.acquire()
        try:
            self._check_open()  # stop() may have run while we waited for a slot
        except EventLogClosed:
            self._slots.release()
            raise
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._exit_lock:  # the thread drains the queue under this lock when it ends: no job is stranded
            if self._exited:
                self._slots.release()
                raise EventLogClosed(f"event log writer ended: {self._failure!r}")
            job = make_job(future, loop)
            self._queue.put_nowait(job)
        self._submitted.append(time.monotonic())
        self.pending_events += len(job.payloads) if isinstance(job, _AppendJob) else 0
        # If the caller is cancelled here the job still runs: a cancelled append may be committed.
        return await future

    def _check_open(self) -> None:
        if self._failure is not None:
            raise EventLogClosed(f"event log writer failed: {self._failure!r}") from self._failure
        if self._stopping:
            raise EventLogClosed("event log is closed")

    # ---- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            carried: _Job | None = None
            while True:
                job = carried if carried is not None else self._queue.get()
                carried = None
                if isinstance(job, _Stop):
                    break
                if isinstance(job, _TrimJob):
                    self._trim(job)
                    continue
                batch, carried = self._collect(job)
                self._commit(batch)
        except Exception as exc:
            # Not re-raised: it is logged here and reported to every waiter and every later call.
            self._failure = exc
            log.exception("event log writer thread failed")
        finally:
            self._conn.close()
            self._notify_exit()

    def _collect(self, first: _AppendJob) -> tuple[list[_AppendJob], _Job | None]:
        """Gather appends arriving within batch_delay; a non-append job ends the batch.

        Two refinements keep the window from costing more than it saves:
        - it opens only when another append is already waiting, which is load;
          a lone append is committed at once, so a sequential publisher does
          not pay batch_delay per event (with 2 ms that capped it at ~430/s);
        - it closes early once appends stop arriving for a quarter of
          batch_delay: a burst that has fully arrived gains nothing by waiting.
        Even without a window, appends that queue while a commit runs share
        the next one (batch_delay=0 still groups commits under load).
        """
        batch = [first]
        size = len(first.payloads)
        if self._queue.empty():
            return batch, None
        deadline = time.monotonic() + self._batch_delay
        gap = self._batch_delay / 4
        while size < self._max_batch:
            remaining = min(deadline - time.monotonic(), gap)
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(job, _AppendJob):
                return batch, job
            batch.append(job)
            size += len(job.payloads)
        return batch, None

    def _commit(self, batch: list[_AppendJob]) -> None:
        before: dict[str, tuple[int, float] | None] = {}
        rows: list[tuple[str, int, float, bytes]] = []
        results: list[list[int]] = []
        now = self._clock()
        for job in batch:
            last_id, last_ts = self._last.get(job.stream, (0, 0.0))
            before.setdefault(job.stream, self._last.get(job.stream))
            ts = max(now, last_ts)  # never backwards within a stream: age trimming drops a prefix
            ids = list(range(last_id + 1, last_id + 1 + len(job.payloads)))
            rows.extend((job.stream, id_, ts, payload) for id_, payload in zip(ids, job.payloads, strict=True))
            self._last[job.stream] = (ids[-1], ts)
            results.append(ids)
        max_count = self._retention.max_count
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(_INSERT_EVENT, rows)
            self._conn.executemany(_SAVE_STREAM, [(stream, *self._last[stream]) for stream in before])
            if max_count is not None:
                # Enforced in the same transaction so the file never holds more than max_count per stream.
                for stream in before:
                    last_id = self._last[stream][0]
                    if last_id > max_count:
                        self._conn.execute(_DROP_BY_COUNT, (stream, last_id - max_count))
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            for stream, previous in before.items():  # the ids were not committed: hand them out again
                if previous is None:
                    del self._last[stream]
                else:
                    self._last[stream] = previous
            for job in batch:
                self._settle(job, None, exc)
            return
        self.commits += 1
        for job, ids in zip(batch, results, strict=True):
            self._settle(job, ids, None)

    def _trim(self, job: _TrimJob) -> None:
        max_age, max_count = self._retention.max_age, self._retention.max_count
        dropped = 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if max_age is not None:
                dropped += self._conn.execute(_DROP_BY_AGE, (job.now - max_age,)).rowcount
            if max_count is not None:
                # Appends already enforce this; re-applying it covers a log reopened with a smaller limit.
                for stream, (last_id, _) in self._last.items():
                    if last_id > max_count:
                        dropped += self._conn.execute(_DROP_BY_COUNT, (stream, last_id - max_count)).rowcount
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._settle(job, None, exc)
            return
        self.commits += 1
        self._settle(job, dropped, None)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("event log rollback failed")

    def _settle(self, job: _AppendJob | _TrimJob, result: Any, exc: BaseException | None) -> None:
        def resolve() -> None:
            self._slots.release()
            if self._submitted:
                self._submitted.popleft()
            self.pending_events -= len(job.payloads) if isinstance(job, _AppendJob) else 0
            if job.future.done():  # the caller was cancelled
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(resolve)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting any more

    def _fail_queued(self) -> None:
        closed = EventLogClosed("event log writer stopped before this job ran")
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(job, _Stop):
                self._settle(job, None, closed)

    def _notify_exit(self) -> None:
        with self._exit_lock:
            self._exited = True
            waiter = self._exit_waiter
            self._fail_queued()
        if waiter is not None:
            loop, future = waiter
            try:
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))
            except RuntimeError:
                pass  # loop already closed
