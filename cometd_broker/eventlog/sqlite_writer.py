"""SqliteWriter: the one thread that writes the SQLite event log, with group commit.

Why a thread: a commit waits for the disk (fsync of the WAL at checkpoints,
write() always), and the event loop must never wait for the disk. Why one
thread: SQLite allows one writer at a time anyway, and a single owner of the
per-stream id counters needs no lock to keep ids strictly increasing.

Appends wait on an asyncio future. The appends of one loop turn travel to the
thread together (one queue item: `_Turn`). The thread takes the first queued
turn, keeps collecting for `batch_delay` seconds (or until `max_batch` events;
a turn is never split), commits them all in one transaction and resolves every
future of the commit with one `call_soon_threadsafe`: under load, many appends
share one commit and one wake-up of the loop. Nothing resolves before COMMIT
returned, so no id is handed out (and no event delivered) before it is stored.

Where the time went before (the broker pinned to one core, the loop busy):
the thread must take the GIL back after every SQLite call (each statement
releases it), and with the loop holding it that costs up to the switch
interval (5 ms) each. So a commit is one multi-row INSERT, its own transaction
(BEGIN, several INSERTs, the retention's deletes and COMMIT only past 1,000
events or when a stream is over max_count), not statements per event and per
stream; the streams' counters are saved by trims, not appends.
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
from dataclasses import dataclass, field
from typing import Any

from .base import EventLogClosed, Retention, as_payloads

log = logging.getLogger("cometd_broker.eventlog")

_INSERT_EVENTS = "INSERT INTO events (stream, id, ts, payload) VALUES "
_SAVE_STREAMS = (
    "INSERT INTO streams (stream, last_id, last_ts) VALUES {} "
    "ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id, last_ts = excluded.last_ts"
)
_DROP_BY_COUNT = "DELETE FROM events WHERE stream = ? AND id <= ?"
_DROP_BY_AGE = "DELETE FROM events WHERE ts < ?"
# Rows per multi-row statement at most (4 parameters a row stays far below SQLite's 32766). A commit
# of up to this many events is one INSERT and one upsert; each size's text is prepared once and then
# found in the connection's statement cache (the sizes a steady load makes are few).
_MAX_ROWS = 1000


# The distinct streams of `events`, one index seek each (a skip scan of the primary key), as `names`.
EVENT_STREAMS = (
    "WITH RECURSIVE names(stream) AS (SELECT MIN(stream) FROM events UNION ALL "
    "SELECT (SELECT MIN(stream) FROM events WHERE stream > names.stream) FROM names WHERE stream IS NOT NULL)"
)
_NEWEST_EVENTS = (
    "{} SELECT stream, (SELECT id FROM events e WHERE e.stream = names.stream ORDER BY id DESC LIMIT 1), "
    "(SELECT ts FROM events e WHERE e.stream = names.stream ORDER BY id DESC LIMIT 1) "
    "FROM names WHERE stream IS NOT NULL"
)


def _load_last(conn: sqlite3.Connection) -> tuple[dict[str, tuple[int, float]], set[str]]:
    """Every stream's last id and timestamp (its saved counters or its newest event, whichever is
    later), and the streams whose saved counters are behind."""
    last: dict[str, tuple[int, float]] = {
        stream: (last_id, last_ts)
        for stream, last_id, last_ts in conn.execute("SELECT stream, last_id, last_ts FROM streams")
    }
    unsaved = set()
    for stream, newest_id, newest_ts in conn.execute(_NEWEST_EVENTS.format(EVENT_STREAMS)):
        saved = last.get(stream)
        if saved is None or newest_id > saved[0]:
            last[stream] = (newest_id, max(newest_ts, saved[1]) if saved else newest_ts)
            unsaved.add(stream)
    return last, unsaved


@dataclass(slots=True, eq=False)
class _AppendJob:
    events: list[tuple[str, bytes]]  # (stream, payload), in order
    future: asyncio.Future[list[int]]


@dataclass(slots=True, eq=False)
class _Turn:
    """The appends one loop turn submitted: one queue item, committed together, resolved together."""

    loop: asyncio.AbstractEventLoop
    jobs: list[_AppendJob] = field(default_factory=list)
    size: int = 0  # events


@dataclass(slots=True, eq=False)
class _TrimJob:
    now: float
    future: asyncio.Future[int]
    loop: asyncio.AbstractEventLoop


class _Stop:
    """The sentinel that ends the thread once every job queued before it is done."""


_Job = _Turn | _TrimJob | _Stop


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
        # Streams whose counters `streams` does not hold yet: a trim saves them before it deletes.
        self._last, self._unsaved = _load_last(conn)
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
        self._turn: _Turn | None = None  # appends of the current loop turn, not yet handed to the thread
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
        return await self._submit_append([(stream, payload) for payload in job_payloads])

    async def append_many(self, events: Sequence[tuple[str, bytes]]) -> list[int]:
        """(stream, payload) pairs to any streams, committed together; their ids in order."""
        payloads = as_payloads([payload for _, payload in events])
        if not payloads:
            self._check_open()
            return []
        return await self._submit_append([(stream, payload) for (stream, _), payload
                                          in zip(events, payloads, strict=True)])

    async def trim(self, now: float) -> int:
        await self._take_slot()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._flush()  # appends submitted before the trim go first: jobs settle in submission order
        with self._exit_lock:  # the thread drains the queue under this lock when it ends: no job is stranded
            if self._exited:
                self._slots.release()
                raise EventLogClosed(f"event log writer ended: {self._failure!r}")
            self._queue.put_nowait(_TrimJob(now, future, loop))
        self._submitted.append(time.monotonic())
        return await future

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
            self._flush()  # this turn's appends are committed too
            if self._thread.is_alive() or not self._thread.ident:
                self._queue.put_nowait(_Stop())
            if not self._thread.ident:  # never started: run nothing, just close
                self._thread.start()
        await asyncio.shield(waiter)
        self._thread.join()

    async def _take_slot(self) -> None:
        self._check_open()
        await self._slots.acquire()
        try:
            self._check_open()  # stop() may have run while we waited for a slot
        except EventLogClosed:
            self._slots.release()
            raise

    async def _submit_append(self, events: list[tuple[str, bytes]]) -> list[int]:
        await self._take_slot()
        loop = asyncio.get_running_loop()
        job = _AppendJob(events, loop.create_future())
        turn = self._turn
        if turn is None or turn.loop is not loop:
            self._flush()  # (another loop's turn: only when one writer serves several loops)
            turn = self._turn = _Turn(loop)
            # Callbacks scheduled now run after everything this turn already has ready: every
            # append made until then travels with this one.
            loop.call_soon(self._flush)
        turn.jobs.append(job)
        turn.size += len(events)
        self._submitted.append(time.monotonic())
        self.pending_events += len(events)
        # If the caller is cancelled here the job still runs: a cancelled append may be committed.
        return await job.future

    def _flush(self) -> None:
        """Hand the current turn's appends to the thread (or fail them, when it has ended)."""
        turn, self._turn = self._turn, None
        if turn is None:
            return
        with self._exit_lock:  # the thread drains the queue under this lock when it ends: no job is stranded
            if not self._exited:
                self._queue.put_nowait(turn)
                return
        self._resolve_turns([turn], None, EventLogClosed(f"event log writer ended: {self._failure!r}"))

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

    def _collect(self, first: _Turn) -> tuple[list[_Turn], _Job | None]:
        """Gather turns arriving within batch_delay; a trim or stop ends the batch.

        Two refinements keep the window from costing more than it saves:
        - it opens only when another turn is already waiting, which is load;
          a lone turn is committed at once, so a sequential publisher does
          not pay batch_delay per event (with 2 ms that capped it at ~430/s);
        - it closes early once turns stop arriving for a quarter of
          batch_delay: a burst that has fully arrived gains nothing by waiting.
        Even without a window, turns that queue while a commit runs share
        the next one (batch_delay=0 still groups commits under load).
        """
        batch = [first]
        size = first.size
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
            if not isinstance(job, _Turn):
                return batch, job
            batch.append(job)
            size += job.size
        return batch, None

    def _commit(self, batch: list[_Turn]) -> None:
        last = self._last
        before: dict[str, tuple[int, float] | None] = {}
        rows: list[Any] = []  # stream, id, ts, payload, stream, id ... : the multi-row INSERTs' parameters
        results: list[list[list[int]]] = []  # per turn, per job: its ids
        now = self._clock()
        for turn in batch:
            turn_ids = []
            for job in turn.jobs:
                ids = []
                for stream, payload in job.events:
                    previous = last.get(stream)
                    if stream not in before:
                        before[stream] = previous
                    if previous is None:
                        id_, ts = 1, now
                    else:
                        # ts never goes backwards within a stream: age trimming drops a prefix.
                        id_, ts = previous[0] + 1, (now if now > previous[1] else previous[1])
                    last[stream] = (id_, ts)
                    rows += (stream, id_, ts, payload)
                    ids.append(id_)
                turn_ids.append(ids)
            results.append(turn_ids)
        max_count = self._retention.max_count
        # Enforced in the same transaction so the file never holds more than max_count per stream.
        drops = [] if max_count is None else [
            (stream, last[stream][0] - max_count) for stream in before if last[stream][0] > max_count]
        conn = self._conn
        try:
            if len(rows) <= _MAX_ROWS * 4 and not drops:
                # One statement is its own transaction (autocommit): no BEGIN and COMMIT, each of
                # which would release the GIL and wait to take it back from a busy loop.
                self._insert(_INSERT_EVENTS + "{}", "(?,?,?,?)", rows, 4)
            else:
                conn.execute("BEGIN IMMEDIATE")
                self._insert(_INSERT_EVENTS + "{}", "(?,?,?,?)", rows, 4)
                conn.executemany(_DROP_BY_COUNT, drops)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            for stream, previous in before.items():  # the ids were not committed: hand them out again
                if previous is None:
                    del last[stream]
                else:
                    last[stream] = previous
            appends = sum(len(turn.jobs) for turn in batch)
            exc.add_note(f"the event log's commit of {len(rows) // 4} events from {appends} appends failed: "
                         "none of them was recorded")
            self._settle_turns(batch, None, exc)
            return
        self.commits += 1
        self._unsaved.update(before)
        self._settle_turns(batch, results, None)

    def _insert(self, template: str, row: str, params: list[Any], width: int) -> None:
        """Run `template` with one `row` group per row of `params`, in as few statements as it takes."""
        rows = ("," + row) * _MAX_ROWS
        step = _MAX_ROWS * width
        for start in range(0, len(params), step):
            chunk = params[start:start + step]
            self._conn.execute(template.format(rows[1:len(chunk) // width * (len(row) + 1)]), chunk)

    def _trim(self, job: _TrimJob) -> None:
        max_age, max_count = self._retention.max_age, self._retention.max_count
        dropped = 0
        unsaved: list[Any] = []
        for stream in self._unsaved:
            unsaved += (stream, *self._last[stream])
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            # The counters first: a stream trimmed to nothing still knows its last id after a restart.
            self._insert(_SAVE_STREAMS, "(?,?,?)", unsaved, 3)
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
        self._unsaved.clear()
        self._settle(job, dropped, None)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("event log rollback failed")

    def _settle_turns(self, batch: list[_Turn], results: list[list[list[int]]] | None,
                      exc: BaseException | None) -> None:
        """Resolve a commit's futures: one call_soon_threadsafe per loop (one, in practice)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for place, turn in enumerate(batch):
            by_loop.setdefault(turn.loop, []).append(place)
        for loop, places in by_loop.items():
            turns = [batch[place] for place in places]
            turn_results = None if results is None else [results[place] for place in places]
            try:
                loop.call_soon_threadsafe(self._resolve_turns, turns, turn_results, exc)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody is waiting any more

    def _resolve_turns(self, turns: list[_Turn], results: list[list[list[int]]] | None,
                       exc: BaseException | None) -> None:
        """On the loop: release the slots and settle every append of `turns`."""
        submitted = self._submitted
        for place, turn in enumerate(turns):
            for index, job in enumerate(turn.jobs):
                self._slots.release()
                if submitted:
                    submitted.popleft()
                self.pending_events -= len(job.events)
                if job.future.done():  # the caller was cancelled
                    continue
                if exc is not None:
                    job.future.set_exception(exc)
                else:
                    job.future.set_result(results[place][index])  # type: ignore[index]

    def _settle(self, job: _TrimJob, result: Any, exc: BaseException | None) -> None:
        def resolve() -> None:
            self._slots.release()
            if self._submitted:
                self._submitted.popleft()
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
            if isinstance(job, _Turn):
                self._settle_turns([job], None, closed)
            elif isinstance(job, _TrimJob):
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
