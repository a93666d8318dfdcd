"""SqliteWriter: the one thread that writes the SQLite event log, with group commit.

Why a thread: a commit waits for the disk (fsync of the WAL at checkpoints,
write() always), and the event loop must never wait for the disk. Why one
thread: SQLite allows one writer at a time anyway, and a single owner of the
per-stream id counters needs no lock to keep ids strictly increasing.

Appends wait on an asyncio future. The thread is a JobThread (job_thread.py,
shared with the contact-center state store): it is woken only when idle and
takes everything queued at once, so an append reaching an idle writer starts at
once, not a loop turn later. It commits up to `max_batch` events per
transaction (an append is never split) and hands the commit to the loop with
one `call_soon_threadsafe`: under load, many appends share one commit and one
wake-up of the loop.
An append may carry `then`, run on the loop with its ids as soon as the commit
is known there, before any task resumes: the broker dispatches from it. "Known
there" is `reap`, which the scheduled callback runs and which the broker also
runs as each batch of requests comes in: on a saturated loop the callback runs
only after the turn's other callbacks (a thousand long-poll reconnects), and a
publish then reached its subscribers a whole turn late; fan-out long-polling
stopped at a quarter of the memory log's rate for that alone.
Nothing resolves before COMMIT returned, so no id is handed out (and no event
delivered) before it is stored.

Where the time went before (the broker pinned to one core, the loop busy):
the thread must take the GIL back after every SQLite call (each statement
releases it), and with the loop holding it that costs up to the switch
interval (5 ms) each. So a commit is one multi-row INSERT, its own transaction
(BEGIN, several INSERTs, the retention's deletes and COMMIT only past 1,000
events or when a stream is over max_count), not statements per event and per
stream; the streams' counters are saved by trims, not appends; and the
per-stream index is brought up to date every `index_batch` events in a
transaction of its own, a row per stream, not an index entry per event
(sqlite_layout.py), made from the seqs the writer listed as it committed them;
the same list lets this process's readers find the tail's events without
scanning it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..job_thread import JobThread, LoopHandoff
from .base import EventLogClosed, Retention, as_payloads
from .sqlite_layout import (
    INDEXED_STREAMS,
    INDEXED_THROUGH,
    MAX_ROWS,
    immediate_transaction,
    index_known_tail,
    index_tail,
    insert_rows,
)

log = logging.getLogger("cometd_broker.eventlog")

_INSERT_EVENTS = "INSERT INTO events (seq, stream, id, ts, payload) {}"
_SAVE_STREAMS = (
    "INSERT INTO streams (stream, last_id, last_ts) {} "
    "ON CONFLICT (stream) DO UPDATE SET last_id = excluded.last_id, last_ts = excluded.last_ts"
)
# Trims run with the tail indexed (see sqlite_layout.py): the per-stream index finds every event. An
# index row goes once its newest event has; a row of which only older events went stays.
_DROP_BY_COUNT = (
    "DELETE FROM events WHERE seq IN (SELECT j.value FROM stream_index b, json_each(b.seqs) j "
    "WHERE b.stream = ?1 AND b.first_id <= ?2) AND id <= ?2",
    "DELETE FROM stream_index WHERE stream = ?1 AND last_id <= ?2",
)
_DROP_BY_AGE = (
    "DELETE FROM events WHERE ts < ?",
    "DELETE FROM stream_index WHERE NOT EXISTS (SELECT 1 FROM events WHERE seq = stream_index.last_seq)",
)
# Events left out of the per-stream index at most before it is brought up to date. Each batch
# writes a row, and dirties about a page, per stream it touches (a leaf of its own once the index
# is large), so larger batches cost less per event: at 40,000 msg/s point-to-point, 8,192 made the
# batches a third of the writer's time. Reads in this process find the tail's events from the
# writer's list (known_tail); a reader in another process (an events tool) scans the tail, up to
# this many events (about 10 ms).
INDEX_BATCH = 65536  # the default

# Every stream's newest event, when the tail is indexed (at startup).
_NEWEST_EVENTS = (
    f"{INDEXED_STREAMS} SELECT names.stream, newest.last_id, e.ts FROM names "
    "JOIN stream_index newest ON newest.stream = names.stream AND newest.last_id = "
    "(SELECT MAX(last_id) FROM stream_index b WHERE b.stream = names.stream) "
    "JOIN events e ON e.seq = newest.last_seq"
)


def _load_last(conn: sqlite3.Connection) -> tuple[dict[str, tuple[int, float]], set[str]]:
    """Every stream's last id and timestamp (its saved counters or its newest event, whichever is
    later), and the streams whose saved counters are behind."""
    last: dict[str, tuple[int, float]] = {
        stream: (last_id, last_ts)
        for stream, last_id, last_ts in conn.execute("SELECT stream, last_id, last_ts FROM streams")
    }
    unsaved = set()
    for stream, newest_id, newest_ts in conn.execute(_NEWEST_EVENTS):
        saved = last.get(stream)
        if saved is None or newest_id > saved[0]:
            last[stream] = (newest_id, max(newest_ts, saved[1]) if saved else newest_ts)
            unsaved.add(stream)
    return last, unsaved


def _index_at_start(conn: sqlite3.Connection) -> int:
    """Index the tail a previous run left (it may have been killed), and return the last seq given:
    new events must come after it even when every event was trimmed, or they would count as indexed.
    One transaction: a broker may be appending meanwhile when this is an events-reading tool."""
    with immediate_transaction(conn):
        through = conn.execute(f"SELECT {INDEXED_THROUGH}").fetchone()[0]
        last_seq = max(through, conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        if last_seq > through:
            index_tail(conn, last_seq, recovering=True)
    return last_seq


@dataclass(slots=True, eq=False)
class _AppendJob:
    events: list[tuple[str, bytes]]  # (stream, payload), in order
    future: asyncio.Future[Any]  # the ids, or what `then` returned
    loop: asyncio.AbstractEventLoop
    then: Callable[[list[int]], Any] | None  # run on the loop with the ids, once committed


@dataclass(slots=True, eq=False)
class _TrimJob:
    now: float
    future: asyncio.Future[int]
    loop: asyncio.AbstractEventLoop


_Job = _AppendJob | _TrimJob
_Settled = tuple[list[tuple[_AppendJob, list[int] | None]], BaseException | None]  # a commit's, for a loop


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
        commit_lock: threading.Lock | None = None,
        after_commit: Callable[[], None] | None = None,
        index_batch: int = INDEX_BATCH,
        name: str = "eventlog-sqlite-writer",
    ) -> None:
        """`commit_lock` is held while a transaction runs (the WAL checkpointer may hold the writer back
        with it); `after_commit` is called on the thread after each commit."""
        if batch_delay < 0 or max_batch < 1 or max_pending < 1 or index_batch < 1:
            raise ValueError("batch_delay must be >= 0, max_batch, max_pending and index_batch >= 1")
        self._index_batch = index_batch
        self._conn = conn
        self._commit_lock = commit_lock or threading.Lock()
        self._after_commit = after_commit or (lambda: None)
        self._retention = retention
        self._clock = clock
        self._batch_delay = batch_delay
        self._max_batch = max_batch
        self._seq = _index_at_start(conn)  # the last seq given (see sqlite_layout.py)
        # stream -> (last id ever assigned, last timestamp); loaded once, then owned by the thread.
        # Streams whose counters `streams` does not hold yet: a trim saves them before it deletes.
        self._last, self._unsaved = _load_last(conn)
        # The tail: events committed since the per-stream index was last brought up to date (through
        # seq `_indexed_through`): per stream, its first id in the tail and its seqs there, in order.
        # The next batch is made from them, and this process's readers find the tail's events with
        # them instead of scanning it (`known_tail`); a drop by count that reaches a stream's tail
        # indexes it first. Changed under `_tail_lock`, as the readers copy from other threads.
        self._unindexed = 0
        self._tail: dict[str, tuple[int, list[int]]] = {}
        self._indexed_through = self._listed_through = self._seq  # the last seq listed
        self._tail_lock = threading.Lock()
        self._slots = asyncio.Semaphore(max_pending)  # bounds the queued jobs
        self._thread: JobThread[_Job] = JobThread(name, self._run, self._on_exit)
        self._stopping = False
        self.commits = 0  # transactions committed; appends / commits is the group-commit factor
        # The event-log lag, for metrics: events appended but not yet committed, and when each queued
        # job was submitted (jobs are settled in submission order, so the oldest is first).
        self.pending_events = 0
        self._submitted: deque[float] = deque()
        # Commits known to the thread, settled on their loop in commit order by `reap`.
        self._settled: LoopHandoff[_Settled] = LoopHandoff(lambda settled: self._resolve_appends(*settled))

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.alive

    @property
    def failure(self) -> BaseException | None:
        """What stopped the thread, if it failed."""
        return self._thread.failure

    @property
    def unindexed(self) -> int:
        """Events committed since the per-stream index was last brought up to date (the tail)."""
        return self._unindexed

    def known_tail(self, stream: str, last_seq: int, after: int, limit: int) -> tuple[int, int, int, int, list[int]]:
        """From any thread: `stream`'s events in the tail as this writer lists them now, for a reader
        whose snapshot's last seq is `last_seq`: (indexed_through, the last seq listed, the stream's first
        id in the tail, how many of its listed events come no later than last_seq, and the seqs of up to
        `limit` of those after id `after`). Every event it committed by then is listed, and perhaps some of
        a commit under way (a reader's snapshot does not see those, nor a failed commit's): so a reader
        whose snapshot started first, and whose snapshot's indexed_through is the one given and last seq
        no later than the last listed, finds every tail event it can see here. A later last seq is another
        process's (an events tool that appends): that reader must scan."""
        with self._tail_lock:
            first_id, seqs = self._tail.get(stream, (0, []))
            count = bisect.bisect_right(seqs, last_seq)
            start = max(0, after + 1 - first_id)
            return (self._indexed_through, self._listed_through, first_id, count,
                    seqs[start:min(count, start + limit)])

    @property
    def oldest_pending_age(self) -> float:
        """Seconds the oldest job not yet committed has waited (0 when none waits)."""
        return time.monotonic() - self._submitted[0] if self._submitted else 0.0

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        job_payloads = as_payloads(payloads)
        if not job_payloads:
            self._check_open()
            return []
        return await self._submit_append([(stream, payload) for payload in job_payloads], None)

    async def append_many(self, events: Sequence[tuple[str, bytes]]) -> list[int]:
        """(stream, payload) pairs to any streams, committed together; their ids in order."""
        return await self.append_many_then(events, None)

    async def append_many_then(self, events: Sequence[tuple[str, bytes]],
                               then: Callable[[list[int]], Any] | None) -> Any:
        """`append_many`, then `then(ids)` on the loop as soon as the commit is known there (even when
        the caller was cancelled meanwhile: what is committed is delivered); its result is returned."""
        payloads = as_payloads([payload for _, payload in events])
        if not payloads:
            self._check_open()
            return [] if then is None else then([])
        return await self._submit_append([(stream, payload) for (stream, _), payload
                                          in zip(events, payloads, strict=True)], then)

    async def trim(self, now: float) -> int:
        await self._take_slot()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._submit(_TrimJob(now, future, loop))  # after every append submitted before it
        return await future

    async def stop(self) -> None:
        """Commit every job queued so far, then end the thread and close the connection."""
        self._stopping = True
        await self._thread.stop()

    async def _take_slot(self) -> None:
        self._check_open()
        await self._slots.acquire()
        try:
            self._check_open()  # stop() may have run while we waited for a slot
        except EventLogClosed:
            self._slots.release()
            raise

    async def _submit_append(self, events: list[tuple[str, bytes]], then: Callable[[list[int]], Any] | None) -> Any:
        await self._take_slot()
        loop = asyncio.get_running_loop()
        job = _AppendJob(events, loop.create_future(), loop, then)
        self.pending_events += len(events)
        self._submit(job)
        # If the caller is cancelled here the job still runs: a cancelled append may be committed.
        return await job.future

    def _submit(self, job: _Job) -> None:
        """Queue `job` for the thread (or fail it, when the thread has ended)."""
        self._submitted.append(time.monotonic())
        if self._thread.submit(job):
            return
        closed = EventLogClosed(f"event log writer ended: {self.failure!r}")
        if isinstance(job, _AppendJob):
            self._resolve_appends([(job, None)], closed)
        else:
            job.loop.call_soon(self._settle_trim, job, None, closed)

    def _check_open(self) -> None:
        failure = self._thread.failure
        if failure is not None:
            raise EventLogClosed(f"event log writer failed: {failure!r}") from failure
        if self._stopping:
            raise EventLogClosed("event log is closed")

    # ---- the thread -------------------------------------------------------------------------

    def _run(self, jobs: list[_Job]) -> None:
        """On the thread: every job queued since the last call, in order; a job is never split."""
        jobs = self._linger(jobs)
        appends: list[_AppendJob] = []
        size = 0
        for job in jobs:
            if isinstance(job, _AppendJob):
                if appends and size + len(job.events) > self._max_batch:
                    self._commit(appends)
                    appends, size = [], 0
                appends.append(job)
                size += len(job.events)
                continue
            if appends:  # jobs settle in submission order: the appends before a trim go first
                self._commit(appends)
                appends, size = [], 0
            self._trim(job)
        if appends:
            self._commit(appends)

    def _linger(self, jobs: list[_Job]) -> list[_Job]:
        """With `batch_delay`, a take that found more than one job (which is load) keeps collecting for
        up to batch_delay, closing early once jobs stop arriving for a quarter of it: a burst that has
        fully arrived gains nothing by waiting. Without it, jobs that queue while a commit runs still
        share the next one."""
        if self._batch_delay <= 0 or len(jobs) < 2:
            return jobs
        deadline = time.monotonic() + self._batch_delay
        gap = self._batch_delay / 4
        while sum(len(job.events) for job in jobs if isinstance(job, _AppendJob)) < self._max_batch:
            remaining = min(deadline - time.monotonic(), gap)
            if remaining <= 0:
                break
            more = self._thread.take(remaining)
            if not more:
                break
            jobs += more
        return jobs

    def _on_exit(self, left: list[_Job]) -> None:
        """On the thread, at its end: fail what was never run, then close the connection."""
        closed = EventLogClosed("event log writer stopped before this job ran")
        appends = [job for job in left if isinstance(job, _AppendJob)]
        if appends:
            self._settle_appends(appends, None, closed)
        for job in left:
            if isinstance(job, _TrimJob):
                self._post_trim(job, None, closed)
        self._conn.close()

    def _commit(self, batch: list[_AppendJob]) -> None:
        last = self._last
        before: dict[str, tuple[int, float] | None] = {}
        rows: list[Any] = []  # seq, stream, id, ts, payload, seq ... : the multi-row INSERTs' parameters
        results: list[list[int]] = []  # per job: its ids
        now = self._clock()
        first_seq = seq = self._seq
        tail = self._tail
        listed: dict[str, int] = {}  # per stream: how many seqs it had in the tail (a failure unlists the rest)
        # Each event is listed in the tail as it is numbered, before the commit, which readers may see as
        # soon as it is made (see known_tail); they see none of it until the whole batch is listed.
        with self._tail_lock:
            for job in batch:
                ids = []
                for stream, payload in job.events:
                    previous = last.get(stream)
                    entry = tail.get(stream)
                    if stream not in before:
                        before[stream] = previous
                        listed[stream] = 0 if entry is None else len(entry[1])
                    if previous is None:
                        id_, ts = 1, now
                    else:
                        # ts never goes backwards within a stream: age trimming drops a prefix.
                        id_, ts = previous[0] + 1, (now if now > previous[1] else previous[1])
                    last[stream] = (id_, ts)
                    seq += 1
                    rows += (seq, stream, id_, ts, payload)
                    if entry is None:
                        tail[stream] = (id_, [seq])
                    else:
                        entry[1].append(seq)
                    ids.append(id_)
                results.append(ids)
            self._seq = self._listed_through = seq
        max_count = self._retention.max_count
        # Enforced in the same transaction so the file never holds more than max_count per stream.
        drops = [] if max_count is None else [
            (stream, last[stream][0] - max_count) for stream in before if last[stream][0] > max_count]
        # Drops find events through the per-stream index: one that reaches the tail indexes it first.
        index = any(upto >= tail[stream][0] for stream, upto in drops)
        failure = self._run_transaction(lambda: self._write_events(rows, drops, index))
        if failure is not None:
            self._seq = first_seq
            self._unlist(listed)
            for stream, previous in before.items():  # the ids were not committed: hand them out again
                if previous is None:
                    del last[stream]
                else:
                    last[stream] = previous
            failure.add_note(f"the event log's commit of {len(rows) // 5} events from {len(batch)} appends "
                             "failed: none of them was recorded")
            self._settle_appends(batch, None, failure)
            return
        self._unsaved.update(before)
        if index:
            self._indexed()
        else:
            self._unindexed += len(rows) // 5
        self._settle_appends(batch, results, None)
        if self._unindexed >= self._index_batch:
            self._index_tail()

    def _unlist(self, listed: dict[str, int]) -> None:
        """Take a failed commit's events out of the tail again (after `_seq` went back)."""
        with self._tail_lock:
            self._listed_through = self._seq
            for stream, count in listed.items():
                if count:
                    del self._tail[stream][1][count:]
                else:
                    del self._tail[stream]

    def _write_events(self, rows: list[Any], drops: list[tuple[str, int]], index: bool) -> None:
        if len(rows) <= MAX_ROWS * 5 and not drops:
            # One statement is its own transaction (autocommit): no BEGIN and COMMIT, each of
            # which would release the GIL and wait to take it back from a busy loop.
            insert_rows(self._conn, _INSERT_EVENTS, "(?,?,?,?,?)", rows, 5)
        else:
            self._conn.execute("BEGIN IMMEDIATE")
            insert_rows(self._conn, _INSERT_EVENTS, "(?,?,?,?,?)", rows, 5)
            if index:
                index_tail(self._conn, self._seq)
            for statement in _DROP_BY_COUNT:
                self._conn.executemany(statement, drops)
            self._conn.execute("COMMIT")

    def _index_tail(self) -> None:
        """Bring the per-stream index up to date, in a transaction of its own. A failure is logged and
        left for the next batch: until then the readers scan a longer tail, nothing is lost."""

        def write() -> None:
            self._conn.execute("BEGIN IMMEDIATE")
            if not index_known_tail(self._conn, self._tail, self._seq, self._indexed_through):
                index_tail(self._conn, self._seq)  # from the events, as another opener left them
            self._conn.execute("COMMIT")

        failure = self._run_transaction(write)
        if failure is not None:
            log.warning("the event log could not index its last %d events (it will try again): %r",
                        self._unindexed, failure)
            return
        self._indexed()

    def _indexed(self) -> None:
        self._unindexed = 0
        with self._tail_lock:
            self._tail.clear()
            self._indexed_through = self._seq

    def _run_transaction(self, write: Callable[[], None]) -> sqlite3.Error | None:
        """Run `write` under the commit lock (the checkpointer may hold the writer back with it);
        its SQLite error, rolled back, or None once committed."""
        with self._commit_lock:
            try:
                write()
            except sqlite3.Error as exc:
                self._rollback()
                return exc
        self.commits += 1
        self._after_commit()
        return None

    def _trim(self, job: _TrimJob) -> None:
        max_age, max_count = self._retention.max_age, self._retention.max_count
        unsaved: list[Any] = []
        for stream in self._unsaved:
            unsaved += (stream, *self._last[stream])
        dropped = 0

        def write() -> None:
            nonlocal dropped
            self._conn.execute("BEGIN IMMEDIATE")
            # The counters first: a stream trimmed to nothing still knows its last id after a restart.
            insert_rows(self._conn, _SAVE_STREAMS, "(?,?,?)", unsaved, 3)
            index_tail(self._conn, self._seq)  # the trims find events through the per-stream index
            if max_age is not None:
                dropped += self._conn.execute(_DROP_BY_AGE[0], (job.now - max_age,)).rowcount
                self._conn.execute(_DROP_BY_AGE[1])
            if max_count is not None:
                # Appends already enforce this; re-applying it covers a log reopened with a smaller limit.
                for stream, (last_id, _) in self._last.items():
                    if last_id > max_count:
                        dropped += self._conn.execute(_DROP_BY_COUNT[0], (stream, last_id - max_count)).rowcount
                        self._conn.execute(_DROP_BY_COUNT[1], (stream, last_id - max_count))
            self._conn.execute("COMMIT")

        failure = self._run_transaction(write)
        if failure is not None:
            self._post_trim(job, None, failure)
            return
        self._unsaved.clear()
        self._indexed()
        self._post_trim(job, dropped, None)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("event log rollback failed")

    def _settle_appends(self, batch: list[_AppendJob], results: list[list[int]] | None,
                        exc: BaseException | None) -> None:
        """From the thread: hand a commit's appends to their loop (one, in practice), to be resolved by
        its next `reap`."""
        done = list(zip(batch, results or [None] * len(batch), strict=True))
        self._settled.post_by_loop(done, lambda pair: pair[0].loop, lambda mine: (mine, exc))

    def reap(self) -> None:
        """On a loop: resolve the appends committed for it so far, in commit order (see LoopHandoff); the
        broker calls it as each batch of requests comes in."""
        self._settled.reap()

    def _resolve_appends(self, done: list[tuple[_AppendJob, list[int] | None]], exc: BaseException | None) -> None:
        """On the loop: release the slots, run each committed append's `then`, settle its future."""
        submitted = self._submitted
        for job, ids in done:
            self._slots.release()
            if submitted:
                submitted.popleft()
            self.pending_events -= len(job.events)
            future = job.future
            if exc is not None or ids is None:
                if not future.done():  # else the caller was cancelled
                    future.set_exception(exc or EventLogClosed("event log append was not committed"))
                continue
            if job.then is None:
                if not future.done():
                    future.set_result(ids)
                continue
            try:
                outcome = job.then(ids)
            except Exception as error:  # the caller's to handle, as if its own code had raised it
                if not future.done():
                    future.set_exception(error)
                continue
            if not future.done():
                future.set_result(outcome)

    def _post_trim(self, job: _TrimJob, result: Any, exc: BaseException | None) -> None:
        try:
            job.loop.call_soon_threadsafe(self._settle_trim, job, result, exc)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting any more

    def _settle_trim(self, job: _TrimJob, result: Any, exc: BaseException | None) -> None:
        self._slots.release()
        if self._submitted:
            self._submitted.popleft()
        if job.future.done():  # the caller was cancelled
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
