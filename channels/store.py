"""Persistence of contact-center state in SQLite: one JSON document per (kind, key).

The engine keeps its state in memory and writes every changed document here in one transaction per
operation, before the operation's notifications are published, so a restart resumes from the last
applied operation. WAL with synchronous=NORMAL keeps a commit to a few tens of microseconds: the
writes are small and run on the event loop without stalling it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson

Document = dict[str, Any]
Change = tuple[str, str, Document | None]  # (kind, key, document or None to delete)


class StoreUnavailable(Exception):
    """The state could not be read or written: Redis is unreachable, or this process is no longer leader
    (a cluster's store; here so that code serving both kinds of store needs no Redis to name it)."""

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
    `channels.redis_store.RedisStateStore` (a cluster's Redis). Synchronous on purpose: a write happens
    inside the engine's locked run, between applying a change and publishing its notifications."""

    def load(self, kind: str) -> dict[str, Document]:
        """Every document of a kind, by key."""

    def apply(self, changes: Iterable[Change]) -> None:
        """Write and delete documents atomically: all of them or none."""

    def close(self) -> None:
        """Release the connection; nothing is written after."""


class StateStore:
    """A small document store; `path` ":memory:" keeps nothing across restarts (tests, demos)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()  # one writer, whatever thread a caller is on
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def load(self, kind: str) -> dict[str, Document]:
        """Every document of a kind, by key."""
        with self._lock:
            rows = self._db.execute("SELECT key, body FROM documents WHERE kind = ?", (kind,)).fetchall()
        return {key: orjson.loads(body) for key, body in rows}

    def apply(self, changes: Iterable[Change]) -> None:
        """Write and delete documents in one transaction: all of them or none."""
        encoded = [(kind, key, None if doc is None else orjson.dumps(doc)) for kind, key, doc in changes]
        if not encoded:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for kind, key, body in encoded:
                    if body is None:
                        self._db.execute("DELETE FROM documents WHERE kind = ? AND key = ?", (kind, key))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO documents (kind, key, body) VALUES (?, ?, ?)",
                                         (kind, key, body))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, kind: str, key: str, document: Document) -> None:
        self.apply([(kind, key, document)])

    def delete(self, kind: str, key: str) -> None:
        self.apply([(kind, key, None)])

    def close(self) -> None:
        with self._lock:
            self._db.close()
