"""Persistence of contact-center state in SQLite: one JSON document per (kind, key).

The engine keeps its state in memory and writes every changed document here, one write per operation,
and publishes the operation's notifications only once that write has committed, so a restart resumes
from the last operation anybody heard of.

Nothing here runs on the event loop but encoding (DESIGN.md rule 4): `submit` queues its documents for the
store's writer thread (a `JobThread`, as the event log's writer) and hands back a future the thread resolves
after COMMIT; `apply` awaits it. The thread takes every write queued while it was busy into one transaction
(group commit, up to MAX_BATCH writes), and commits writes in the order they were queued, so an awaited
write implies every write queued before it is committed too: a caller that publishes after its own write
never tells anyone of a change that is not stored yet.

`load` reads on the caller's thread: it is for start-up only, before the loop serves (the engine is
built, and its state restored, before the app starts), never for a running engine.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from cometd_broker.job_thread import JobThread, LoopHandoff

from .write_budget import MAX_PENDING, MAX_PENDING_BYTES, WriteBudget, size_of

log = logging.getLogger("channels.store")

Document = dict[str, Any]
Change = tuple[str, str, Document | None]  # (kind, key, document or None to delete)
Row = tuple[str, str, bytes | None]  # a change encoded: (kind, key, JSON or None to delete)

MAX_BATCH = 256  # writes committed in one transaction at most


class StoreUnavailable(Exception):
    """The state could not be read or written: Redis is unreachable, or this process is no longer leader
    (a cluster's store; here so that code serving both kinds of store needs no Redis to name it), or the
    store is closed."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID
"""


class DocumentStore(Protocol):
    """What the engine needs of its persistence: `StateStore` (SQLite, one process) or
    `channels.redis_store.RedisStateStore` (a cluster's Redis).

    Writes are ordered: `submit` queues a write and returns a future that resolves once its changes are
    stored, after every write queued before it; `apply` is `submit` awaited. The engine queues a run's
    write while it holds its lock and awaits it after, so runs share commits (conversation_core.py); it
    publishes a run's notifications only once that future resolved. The loop serves on meanwhile."""

    def load(self, kind: str) -> dict[str, Document]:
        """Every document of a kind, by key, as stored when the engine starts (start-up only)."""

    async def submit(self, changes: Iterable[Change]) -> asyncio.Future[None]:
        """Queue a write (waiting, not blocking, while the store holds too many writes or bytes not stored
        yet: write_budget.py). The future resolves once it is stored, after every write queued before it,
        or fails with the reason it was not."""

    async def apply(self, changes: Iterable[Change]) -> None:
        """Write and delete documents atomically (all of them or none), after every earlier write."""

    async def close(self) -> None:
        """Finish the writes queued so far, then release the connection; nothing is written after."""

    def stats(self) -> dict[str, int]:
        """writes, commits, pending_writes, pending_bytes and waiting (callers held back), for /metrics."""

    def reap(self) -> None:
        """On the loop: settle now the writes already stored, if a thread stores them (see
        cometd_broker.job_thread.LoopHandoff); the app has the broker call it as requests come in."""


def stored_now() -> asyncio.Future[None]:
    """The future of a write with nothing to store (or stored already): resolved."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def encode(changes: Iterable[Change]) -> list[Row]:
    """The changes as the store writes them; raises (nothing queued) if a document is not JSON."""
    return [(kind, key, None if doc is None else orjson.dumps(doc)) for kind, key, doc in changes]


@dataclass(slots=True, eq=False)
class _Write:
    rows: list[Row]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    budget: WriteBudget  # released when the write is settled
    size: int


class StateStore:
    """A small document store; `path` ":memory:" keeps nothing across restarts (tests, demos).

    One connection, owned by the writer thread once the first write starts it (`load` shares it under
    a lock, at start-up). `commits` and `writes` count transactions and submitted writes: writes /
    commits is the group-commit factor."""

    def __init__(self, path: str | Path, *, max_pending: int = MAX_PENDING,
                 max_pending_bytes: int = MAX_PENDING_BYTES, max_batch: int = MAX_BATCH) -> None:
        if max_pending < 1 or max_batch < 1 or max_pending_bytes < 1:
            raise ValueError("max_pending, max_pending_bytes and max_batch must be >= 1")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()  # the connection: the writer thread, or a start-up load
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._max_batch = max_batch
        self._budget = WriteBudget(max_pending, max_pending_bytes)
        self._thread: JobThread[_Write] = JobThread("channels-state-writer", self._run, self._on_exit)
        self._settled: LoopHandoff[tuple[list[_Write], BaseException | None]] = LoopHandoff(
            lambda settled: _resolve(*settled))
        self._closing = False
        self.commits = 0
        self.writes = 0

    def load(self, kind: str) -> dict[str, Document]:
        """Every document of a kind, by key (start-up: this reads the file on the caller's thread)."""
        with self._lock:
            rows = self._db.execute("SELECT key, body FROM documents WHERE kind = ?", (kind,)).fetchall()
        return {key: orjson.loads(body) for key, body in rows}

    async def apply(self, changes: Iterable[Change]) -> None:
        """Write and delete documents in one transaction: all of them or none. Returns once committed;
        a caller cancelled meanwhile does not cancel the write."""
        await (await self.submit(changes))

    async def submit(self, changes: Iterable[Change]) -> asyncio.Future[None]:
        """Queue the write for the writer thread; the future resolves after its COMMIT (see DocumentStore)."""
        rows = encode(changes)
        if not rows:
            return stored_now()
        self._check_open()
        size = size_of(rows)
        await self._budget.admit(size, self._check_open)
        loop = asyncio.get_running_loop()
        write = _Write(rows, loop.create_future(), loop, self._budget, size)
        if not self._thread.started:
            self._thread.start()
        if not self._thread.submit(write):  # closed meanwhile, or the thread failed
            self._budget.release(size)
            raise StoreUnavailable("contact-center state store is closed")
        return write.future

    async def close(self) -> None:
        """Commit every write queued so far, then end the thread and close the connection."""
        self._closing = True
        if self._thread.started:
            await self._thread.stop()
        else:  # never written: nothing to wait for
            self._close_db()

    def close_now(self) -> None:
        """`close` for code with no loop running (tools, tests): blocks until the queued writes are committed."""
        self._closing = True
        if self._thread.started:
            self._thread.stop_now()
        else:
            self._close_db()

    def _close_db(self) -> None:
        with self._lock:
            self._db.close()

    def reap(self) -> None:
        """On the loop: settle the writes committed so far (see DocumentStore.reap)."""
        self._settled.reap()

    def stats(self) -> dict[str, int]:
        """For /metrics: writes and commits so far (writes / commits is the group-commit factor), and what
        waits for the store now."""
        return {"writes": self.writes, "commits": self.commits, **self._budget.pending()}

    def _check_open(self) -> None:
        if self._closing:
            raise StoreUnavailable("contact-center state store is closed")

    # ---- the writer thread ------------------------------------------------------------------------

    def _run(self, writes: list[_Write]) -> None:
        """On the thread: the writes queued since the last call, MAX_BATCH to a transaction, in order."""
        for start in range(0, len(writes), self._max_batch):
            self._commit(writes[start:start + self._max_batch])

    def _on_exit(self, left: list[_Write]) -> None:
        """On the thread, at its end: fail any write it did not run, then close the connection."""
        if left:
            stopped = StoreUnavailable("contact-center state store stopped")
            self._settled.post_by_loop(left, lambda write: write.loop, lambda mine: (mine, stopped))
        self._close_db()

    def _commit(self, batch: list[_Write]) -> None:
        failure: BaseException | None = None
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for write in batch:
                    for kind, key, body in write.rows:
                        if body is None:
                            self._db.execute("DELETE FROM documents WHERE kind = ? AND key = ?", (kind, key))
                        else:
                            self._db.execute("INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?, ?, ?)",
                                             (kind, key, body))
                self._db.execute("COMMIT")
            except Exception as exc:  # a full disk, a broken file: every write of the batch fails
                failure = exc
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("contact-center state store: rollback failed")
            else:
                self.commits += 1
                self.writes += len(batch)
        self._settled.post_by_loop(batch, lambda write: write.loop, lambda mine: (mine, failure))


def _resolve(writes: list[_Write], failure: BaseException | None) -> None:
    """On the loop: settle the writes of one commit."""
    for write in writes:
        write.budget.release(write.size)
        if write.future.done():  # the caller was cancelled: the write happened (or failed) all the same
            continue
        if failure is None:
            write.future.set_result(None)
        else:
            write.future.set_exception(failure)
