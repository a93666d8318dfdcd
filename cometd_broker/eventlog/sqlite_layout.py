"""The SQLite event log's file layout: its schema, the upgrade from older versions, and the SQL that
both the writer and the readers need to see the events the way the layout keeps them.

Why this layout (3): events are appended in the order they are committed (`seq`), so a commit
writes the last few pages of the table and of the time index, however many streams it touches.
The per-stream index, `events_by_stream`, is brought up to date in batches ("indexing the tail"):
the events after `indexed_through` are found by scanning that short tail. Before it (2), every
event went into a (stream, id) index at once; on point-to-point load each event dirtied a leaf of
its own, which was written to the WAL and copied again at checkpoints, and that was most of what
recording an event cost (bench/sqlite_schema.py compares the two).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator

log = logging.getLogger("cometd_broker.eventlog")

# 2: `streams` is written when a trim deletes, not on every append (see the table's comment); a
#    version that reads it as complete (1) must not open such a file, and the version check refuses it.
# 3: events in commit order, indexed per stream in batches (see above); files of 1 and 2 are rebuilt.
SCHEMA_VERSION = 3
# No ";" in its comments: an upgrade runs it a statement at a time.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,  -- commit order, given by the writer, never reused
    stream  TEXT    NOT NULL,
    id      INTEGER NOT NULL,
    ts      REAL    NOT NULL,
    payload BLOB    NOT NULL
);
-- read_range's order and trimming by age. (stream, id) ride along so ordering needs no lookups.
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts, stream, id);
-- Every event up to meta's indexed_through, by stream: the tail after it is scanned instead.
CREATE TABLE IF NOT EXISTS events_by_stream (
    stream  TEXT    NOT NULL,
    id      INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (stream, id)
) WITHOUT ROWID;
-- The last id ever assigned per stream, kept even when every event of the stream was trimmed,
-- so ids are never reused after a restart. Saved by the trims, before they delete: a stream's
-- last id is the larger of this and its newest event's, so appends need not write it (a row
-- per stream and commit cost as much as the events themselves).
CREATE TABLE IF NOT EXISTS streams (
    stream  TEXT    PRIMARY KEY,
    last_id INTEGER NOT NULL,
    last_ts REAL    NOT NULL
);
-- Facts about the log itself: its epoch (made once, when the file is created: see base.py) and
-- how far events_by_stream reaches (indexed_through, a seq).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('indexed_through', '0');
"""

# The last seq that events_by_stream holds, inside any statement: one snapshot sees both.
INDEXED_THROUGH = "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'indexed_through')"
# The events not yet in events_by_stream: a scan of the table's last rows (rowid order), never long.
TAIL = f"seq > {INDEXED_THROUGH}"
# In a stream, every indexed event comes before every event of the tail (ids and seqs grow
# together), which the readers' queries rely on.

# Sorted, so the index's pages are written in order, each once per batch. Bounded by the `through`
# saved with it: another process's events-reading tool may index the tail too (when it opens the log).
_INDEX_TAIL = ("INSERT {} INTO events_by_stream (stream, id, seq) SELECT stream, id, seq FROM events "
               f"WHERE {TAIL} AND seq <= ? ORDER BY stream, id")
_SAVE_INDEXED_THROUGH = "UPDATE meta SET value = ? WHERE key = 'indexed_through'"


def index_tail(conn: sqlite3.Connection, through: int, *, recovering: bool = False) -> None:
    """Within the caller's transaction: index the tail's events up to seq `through`, the last committed.
    `recovering`: indexed_through may be behind (a file whose meta was lost), skip what is indexed."""
    conn.execute(_INDEX_TAIL.format("OR IGNORE" if recovering else ""), (through,))
    conn.execute(_SAVE_INDEXED_THROUGH, (str(through),))


# The distinct indexed streams, one index seek each (a skip scan of the key), as `names`.
INDEXED_STREAMS = (
    "WITH RECURSIVE names(stream) AS (SELECT MIN(stream) FROM events_by_stream UNION ALL "
    "SELECT (SELECT MIN(stream) FROM events_by_stream WHERE stream > names.stream) FROM names "
    "WHERE stream IS NOT NULL)"
)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def prepare(conn: sqlite3.Connection, path: str) -> None:
    """On the writer's connection: check the file's version, rebuild a file of an older layout, and
    make sure every table is there."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.OperationalError(f"{path}: event log schema {version} is newer than {SCHEMA_VERSION}")
    old = _columns(conn, "events")
    if old and "seq" not in old:
        _rebuild(conn, path)
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _rebuild(conn: sqlite3.Connection, path: str) -> None:
    """A file of layout 1 or 2: its events copied into layout 3 in one transaction, in (ts, stream, id)
    order, the order read_range gives them (a crash part way leaves the old file as it was)."""
    count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    log.warning("%s: upgrading the event log's %d events to layout %d (once)", path, count, SCHEMA_VERSION)
    with immediate_transaction(conn):
        conn.execute("DROP INDEX IF EXISTS events_by_time")
        conn.execute("ALTER TABLE events RENAME TO events_before_3")
        for statement in SCHEMA.split(";"):  # not executescript: it would commit first
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO events (stream, id, ts, payload) "
                     "SELECT stream, id, ts, payload FROM events_before_3 ORDER BY ts, stream, id")
        through = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'indexed_through'")
        index_tail(conn, through)
        conn.execute("DROP TABLE events_before_3")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE, then COMMIT, or ROLLBACK if the block raised (for work outside the writer's
    commits, which its `_run_transaction` rolls back)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
