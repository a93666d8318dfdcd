"""SqliteEventLog: the embedded, durable default store.

Writes go through one `SqliteWriter` thread with group commit; reads run on a
small owned pool of reader threads, each with its own connection, so neither
ever blocks the event loop. WAL lets readers proceed while the writer commits.
The file's layout (events in commit order, indexed per stream in batches) is
sqlite_layout.py's.

Durability: with WAL and synchronous=NORMAL a committed transaction survives a
crash of the process (kill -9), which is what "restart safety" needs; only a
power loss or OS crash may lose the last commits. Pass synchronous="FULL" to
also fsync every commit, at a large cost in appends/s.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .base import KEEP_ALL, UNKNOWN_BOUNDS, Bounds, Event, EventLogClosed, Retention, check_limit, new_epoch
from .sqlite_checkpointer import CHECKPOINT_PERIOD, WAL_LIMIT, WalCheckpointer
from .sqlite_layout import (
    CACHED_STATEMENTS,
    INDEXED_SEQS,
    INDEXED_STREAMS,
    TAIL,
    prepare,
    read_stream,
    read_transaction,
    stream_bounds,
)
from .sqlite_writer import INDEX_BATCH, SqliteWriter

T = TypeVar("T")

SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")  # OFF is refused: it would break the kill -9 promise


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; the writer says BEGIN/COMMIT itself and
    # readers run each statement in its own snapshot, so none holds the WAL back.
    # check_same_thread=False: connections are opened here and closed by the owner after their
    # thread has stopped; each is only ever used by one thread at a time.
    # cached_statements: room for every text the multi-row INSERTs make (sqlite_layout.insert_rows).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=CACHED_STATEMENTS)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _open_writer_connection(path: str, synchronous: str) -> tuple[sqlite3.Connection, str]:
    """The writer's connection, with the schema in place, and the log's epoch."""
    conn = _connect(path, synchronous)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot use WAL journal mode (got {mode!r})")
        prepare(conn, path)
        # A file made by an older version gets its epoch on its first open by this one.
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (new_epoch(),))
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    except BaseException:
        conn.close()
        raise
    return conn, epoch


class SqliteEventLog:
    """The SQLite store. Opening is synchronous (schema and counters, once at startup)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        retention: Retention = KEEP_ALL,
        *,
        # Extra seconds an append may wait for others. 0 measured fastest: appends that queue up
        # while a commit runs share the next commit anyway.
        batch_delay: float = 0.0,
        max_batch: int = 1000,  # events per commit at most
        max_pending: int = 10_000,  # appends queued for the writer at most; more wait for a slot
        readers: int = 2,  # reader threads (and connections)
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        checkpoint_period: float = CHECKPOINT_PERIOD,  # seconds at most between WAL checkpoints under load
        wal_limit: int = WAL_LIMIT,  # WAL bytes past which a checkpoint holds the writer back to start it over
        index_batch: int = INDEX_BATCH,  # events indexed per stream together (see sqlite_layout.py)
    ) -> None:
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise ValueError("an in-memory SQLite database is not shared between connections; use MemoryEventLog")
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        if readers < 1:
            raise ValueError("readers must be >= 1")
        if checkpoint_period <= 0 or wal_limit <= 0:
            raise ValueError("checkpoint_period and wal_limit must be > 0")
        self.retention = retention
        self._synchronous = synchronous
        # The epoch is fixed for the file's life: read once, here.
        writer_conn, self._epoch = _open_writer_connection(self.path, synchronous)
        # Checkpoints run on a thread of their own, not inside the writer's commits (see sqlite_checkpointer.py).
        writer_conn.execute("PRAGMA wal_autocheckpoint = 0")
        commit_lock = threading.Lock()
        page_size = writer_conn.execute("PRAGMA page_size").fetchone()[0]
        self._checkpointer = WalCheckpointer(self.path, commit_lock, period=checkpoint_period,
                                             force_pages=max(1, wal_limit // page_size))
        self._writer = SqliteWriter(
            writer_conn,
            retention,
            clock=clock,
            batch_delay=batch_delay,
            max_batch=max_batch,
            max_pending=max_pending,
            commit_lock=commit_lock,
            after_commit=self._checkpointer.nudge,
            index_batch=index_batch,
        )
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="eventlog-sqlite-reader", initializer=self._open_reader
        )
        self._inflight: set[asyncio.Future[Any]] = set()
        self._closed = False
        self._checkpointer.start()
        self._writer.start()

    @property
    def commits(self) -> int:
        """Write transactions committed so far (appends share them: see group commit)."""
        return self._writer.commits

    def stats(self) -> dict[str, Any]:
        """For metrics and readiness: whether appends can succeed, and the writer's lag."""
        writer = self._writer
        problem = None
        if self._closed:
            problem = "event log is closed"
        elif writer.failure is not None:
            problem = f"event log writer failed: {writer.failure!r}"
        elif not writer.alive:
            problem = "event log writer thread is not running"
        checkpointer = self._checkpointer
        return {"store": "sqlite", "up": problem is None, "problem": problem, "commits": writer.commits,
                "pending": writer.pending_events, "oldest_pending_seconds": writer.oldest_pending_age,
                "unindexed": writer.unindexed, "checkpoints": checkpointer.checkpoints,
                "checkpoints_forced": checkpointer.forced, "wal_pages": checkpointer.wal_pages,
                "checkpoint_failures": checkpointer.failures}

    # ---- writes (through the writer thread) -------------------------------------------------

    async def append(self, stream: str, payloads: Sequence[bytes]) -> list[int]:
        self._check_open()
        return await self._writer.append(stream, payloads)

    async def append_many(self, events: Sequence[tuple[str, bytes]]) -> list[int]:
        self._check_open()
        return await self._writer.append_many(events)

    async def append_many_then(self, events: Sequence[tuple[str, bytes]], then: Callable[[list[int]], T]) -> T:
        self._check_open()
        return await self._writer.append_many_then(events, then)

    async def trim(self, now: float) -> int:
        self._check_open()
        return await self._writer.trim(now)

    def reap(self) -> None:
        self._writer.reap()

    # ---- reads (on the reader threads) ------------------------------------------------------

    async def read(self, stream: str, after: int, limit: int) -> list[Event]:
        check_limit(limit)
        rows = await self._on_reader(self._read_stream, stream, after, limit)
        return [Event(stream, id_, ts, payload) for id_, ts, payload in rows]

    def _read_stream(self, stream: str, after: int, limit: int) -> list[tuple[int, float, bytes]]:
        conn = self._local.conn
        with read_transaction(conn):  # the index's rows and the tail, in one snapshot
            return read_stream(conn, stream, after, limit, self._writer.known_tail)

    def _stream_bounds(self, stream: str) -> tuple[int, int | None]:
        conn = self._local.conn
        with read_transaction(conn):  # latest and oldest agree even while the writer commits
            return stream_bounds(conn, stream, self._writer.known_tail)

    async def bounds(self, stream: str) -> Bounds:
        latest, oldest = await self._on_reader(self._stream_bounds, stream)
        if not latest:
            return UNKNOWN_BOUNDS
        return Bounds(latest + 1 if oldest is None else oldest, latest)

    async def epoch(self) -> str:
        self._check_open()
        return self._epoch

    async def bounds_with_epoch(self, stream: str) -> tuple[str, Bounds]:
        return await self.epoch(), await self.bounds(stream)

    async def streams(self) -> list[str]:
        # SQLite's BINARY collation orders UTF-8 bytes, which is Python's code point order.
        rows = await self._query(f"{INDEXED_STREAMS} SELECT stream FROM names WHERE stream IS NOT NULL "
                                 f"UNION SELECT stream FROM events WHERE {TAIL} "
                                 "UNION SELECT stream FROM streams ORDER BY stream", ())
        return [stream for (stream,) in rows]

    async def read_range(
        self,
        *,
        streams: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        after: tuple[float, str, int] | None = None,
        limit: int,
    ) -> list[Event]:
        check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if streams is not None:
            names = sorted(set(streams))
            if not names:
                return []
            listed = ", ".join("?" * len(names))
            # Found through the per-stream index, and in the tail (see sqlite_layout.py).
            clauses.append(f"seq IN ({INDEXED_SEQS.format(listed)} "
                           f"UNION ALL SELECT seq FROM events WHERE {TAIL} AND stream IN ({listed}))")
            params.extend(names * 2)
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        if until is not None:
            clauses.append("ts < ?")
            params.append(until)
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        if after is not None:
            clauses.append("(ts, stream, id) > (?, ?, ?)")
            params.extend(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._query(
            f"SELECT stream, id, ts, payload FROM events {where} ORDER BY ts, stream, id LIMIT ?", (*params, limit)
        )
        return [Event(stream, id_, ts, payload) for stream, id_, ts, payload in rows]

    # ---- lifetime ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit what is queued, stop the writer and the readers, close every connection."""
        if self._closed:
            await self._writer.stop()  # a concurrent close may still be stopping it: wait for it too
            return
        self._closed = True
        await self._writer.stop()
        await self._checkpointer.stop()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        # Idle workers exit at once; a read whose caller was cancelled may still finish first.
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogClosed("event log is closed")

    def _open_reader(self) -> None:
        conn = _connect(self.path, self._synchronous)
        conn.execute("PRAGMA query_only = ON")
        self._local.conn = conn
        with self._reader_lock:
            self._reader_conns.append(conn)

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._local.conn.execute(sql, params).fetchall()

    async def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return await self._on_reader(self._fetch, sql, params)

    async def _on_reader(self, work: Callable[..., T], *args: Any) -> T:
        self._check_open()
        future = asyncio.get_running_loop().run_in_executor(self._readers, work, *args)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return await future
