"""WalCheckpointer: the SQLite event log's WAL checkpoints, on a thread of their own.

A checkpoint copies the WAL's pages into the database file and, with synchronous=NORMAL, fsyncs the
WAL before and the database after. Left to SQLite (wal_autocheckpoint), the committing connection
runs it inside a commit every 1,000 pages: the writer thread then waits for two fsyncs. Point-to-
point events each dirty a leaf of the (stream, id) index, so at 10,000 events/s that is a checkpoint
every few commits, and measured alone (100-event commits to 1,000 streams, one thread) they took
half the writer's time and made one commit in a hundred take 40 ms instead of 2.

So the writer's connection has wal_autocheckpoint off, and this thread checkpoints with its own
connection: PASSIVE checkpoints, which never block the writer, shortly after commits (the writer
nudges it) and at least every `period` seconds. A PASSIVE checkpoint copies what was committed when
it started; what is committed meanwhile waits for the next one. SQLite reuses the WAL from its start
only when a writer finds it wholly copied, which a writer that never pauses would never allow: once
the WAL holds more than `force_pages`, the checkpointer runs passes until one finds little new to
copy, then holds the writer's commit lock for one more, which copies the rest and lets the next
commit start the WAL over: the writer waits for a small copy, not for the WAL's worth.

Durability is as before: a commit is in the WAL (the OS's page cache) when it returns, so it survives
kill -9; an OS crash or power loss can lose what was committed after the last checkpoint, which is
now at most `period` seconds old under a steady load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading

log = logging.getLogger("cometd_broker.eventlog")

# The defaults of the broker's --wal-checkpoint-period and --wal-limit-mb.
CHECKPOINT_PERIOD = 0.1  # seconds between checkpoints at most while commits come in
WAL_LIMIT = 64 * 1024 * 1024  # WAL bytes above which a checkpoint holds the writer back to finish
CATCH_UP_PAGES = 1_024  # what may be left to copy while the writer waits (a few ms of fsync and copying)
CATCH_UP_PASSES = 8  # passes at most to get there (a writer outpacing the copies gets held back anyway)


class WalCheckpointer:
    """Checkpoints `path`'s WAL from its own thread; the writer holds `commit_lock` while it commits."""

    def __init__(self, path: str, commit_lock: threading.Lock, *, period: float, force_pages: int,
                 name: str = "eventlog-sqlite-checkpointer") -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._commit_lock = commit_lock
        self._period = period
        self._force_pages = force_pages
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._exit_lock = threading.Lock()
        self._exited = False  # guarded by _exit_lock: the thread has settled its exit waiters
        self._exit_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.checkpoints = 0  # checkpoints that copied pages
        self.forced = 0  # of which held the writer back to finish the WAL
        self.wal_pages = 0  # pages in the WAL at the last checkpoint
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def native_id(self) -> int | None:
        """The OS's id of the thread once started (for per-thread CPU accounting, as bench/cycle.py does)."""
        return self._thread.native_id

    def nudge(self) -> None:
        """From the writer, after a commit: there is something to copy."""
        self._wake.set()

    async def stop(self) -> None:
        """End the thread, without blocking the loop, and close its connection."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        with self._exit_lock:
            if self._thread.ident is None or self._exited:  # never started, or past its last waiter
                ended.set_result(None)
            else:
                self._exit_waiters.append((loop, ended))
        self._stopping.set()
        self._wake.set()
        await ended
        if self._thread.ident:
            self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        try:
            # stop() sets _stopping before _wake, so a wake-up this loop clears after a stop (Event.wait
            # may say False when its timeout crosses the set) is still seen at the top, never waited for.
            while not self._stopping.is_set():
                self._wake.wait()
                if self._stopping.wait(self._period):  # meanwhile commits gather: one checkpoint copies them all
                    return
                self._wake.clear()
                try:
                    self._checkpoint()
                except sqlite3.Error as exc:
                    # The next one retries; meanwhile the WAL grows, and the commits go on.
                    self.failures += 1
                    log.warning("event log checkpoint failed (the WAL grows until one succeeds): %s", exc)
        finally:
            with self._exit_lock:
                self._exited = True
                waiters, self._exit_waiters = self._exit_waiters, []
            for loop, ended in waiters:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    loop.call_soon_threadsafe(lambda e=ended: e.done() or e.set_result(None))

    def _checkpoint(self) -> None:
        pages = self._passive()
        self.wal_pages = pages
        if pages <= 0:
            return
        self.checkpoints += 1
        if pages <= self._force_pages:
            return
        # Catch up without holding the writer back: each pass copies what came during the one before,
        # which is less each time, until the rest is small enough to copy with the writer waiting.
        for _ in range(CATCH_UP_PASSES):
            longer = self._passive()
            came, pages = longer - pages, longer
            if came <= CATCH_UP_PAGES:
                break
        with self._commit_lock:
            self._passive()
        self.forced += 1

    def _passive(self) -> int:
        """One PASSIVE checkpoint; the WAL's length in pages (it grows until a commit finds it wholly
        copied and starts it over)."""
        _, pages, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return pages
