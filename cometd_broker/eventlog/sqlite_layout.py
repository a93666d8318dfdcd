"""The SQLite event log's file layout: its schema, the upgrade from older versions, and the SQL that
both the writer and the readers need to see the events the way the layout keeps them.

Why this layout (4): events are appended in the order they are committed (`seq`), so a commit
writes the last few pages of the table and of the time index, however many streams it touches.
The per-stream index, `stream_index`, is brought up to date in batches ("indexing the tail"):
the events after `indexed_through` are found from the writer's list of them (in its process) or by
scanning that tail (in another). A batch adds one row per stream it saw, listing that stream's new
events (their seqs, as a JSON array), not one row per event: at point-to-point load each stream
has a few events in a batch, and a row each wrote index pages and WAL for every event. Before (3),
that index had a row per event; before that (2), every event went into a (stream, id) index at
once, each dirtying a leaf of its own (bench/sqlite_schema.py compares them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import orjson

log = logging.getLogger("cometd_broker.eventlog")

# 2: `streams` is written when a trim deletes, not on every append (see the table's comment); a
#    version that reads it as complete (1) must not open such a file, and the version check refuses it.
# 3: events in commit order, indexed per stream in batches (see above); files of 1 and 2 are rebuilt.
# 4: the per-stream index holds a row per stream and batch; a file of 3 has its index made again.
SCHEMA_VERSION = 4
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
-- Every event up to meta's indexed_through, by stream: the tail after it is scanned instead. A row
-- holds a stream's events of one batch, ids first_id..last_id. The rows of a stream do not overlap
-- (a batch indexes a prefix of every stream's events), so rows in last_id order, each sorted, are
-- the stream in order. A row goes when its newest event (last_seq) does: trims drop a prefix of
-- each stream, so its older events are gone too. A trim by count may leave a row's first seqs
-- naming events that are gone. Readers join the events, and skip them.
CREATE TABLE IF NOT EXISTS stream_index (
    stream   TEXT    NOT NULL,
    last_id  INTEGER NOT NULL,
    first_id INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    seqs     TEXT    NOT NULL,  -- a JSON array of the events' seqs
    PRIMARY KEY (stream, last_id)
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

# One row per stream, in stream order, so the index's pages are written in order, each once per batch.
# Bounded by the `through` saved with it: another process's events-reading tool may index the tail
# too (when it opens the log). The order of a row's seqs does not matter: readers sort them.
_INDEX_TAIL = ("INSERT INTO stream_index (stream, last_id, first_id, last_seq, seqs) "
               "SELECT stream, MAX(id), MIN(id), MAX(seq), json_group_array(seq) FROM events "
               f"WHERE {TAIL} AND seq <= ? {{}} GROUP BY stream ORDER BY stream")
# When indexed_through may be behind (a file whose meta was lost): what a stream has indexed is a
# prefix of its ids, so its events after the prefix are the ones to index.
_NOT_INDEXED = "AND id > COALESCE((SELECT MAX(last_id) FROM stream_index i WHERE i.stream = events.stream), 0)"
_SAVE_INDEXED_THROUGH = "UPDATE meta SET value = ? WHERE key = 'indexed_through'"


# The same rows when the writer knows the tail (it committed every event of it since the last batch):
# a stream's first id there and its seqs, in order. Its ids are consecutive (a stream's next event gets
# its last id + 1). No scan of the events, no grouping, no JSON made by SQLite: in a broker that work
# was as much of the writer's time as its INSERTs. Rows in stream order, as above.
_INSERT_INDEX_ROWS = "INSERT INTO stream_index (stream, last_id, first_id, last_seq, seqs) {}"

# Rows per multi-row statement at most (5 parameters a row stays far below SQLite's 32766). A commit
# of up to this many events is one INSERT.
MAX_ROWS = 1000
# SQLite prepares a statement's text once while the connection's statement cache holds it
# (CACHED_STATEMENTS texts, see sqlite.py), and a multi-row INSERT's text depends on its number of
# rows. Commits of every size up to MAX_ROWS made as many texts: under load, hundreds, each prepared
# again whenever the others had pushed it out (a third of the writer's time at 32,000 msg/s). So a
# count above ROW_STEP is rounded up to a multiple of it, with rows of NULLs that the statement's
# LIMIT leaves out: at most ROW_STEP + MAX_ROWS / ROW_STEP texts per statement.
ROW_STEP = 32
CACHED_STATEMENTS = 256


def insert_rows(conn: sqlite3.Connection, template: str, row: str, params: list[Any], width: int) -> None:
    """Run `template`, its `{}` replaced by a SELECT of one `row` group per row of `params` (`width` each),
    in as few statements as it takes."""
    step = MAX_ROWS * width
    for start in range(0, len(params), step):
        chunk = params[start:start + step]
        count = len(chunk) // width
        size = count if count <= ROW_STEP else -(-count // ROW_STEP) * ROW_STEP
        if size > count:
            chunk += [None] * ((size - count) * width)
        chunk.append(count)
        conn.execute(template.format(_rows(row, size)), chunk)


@functools.lru_cache(maxsize=CACHED_STATEMENTS)
def _rows(row: str, size: int) -> str:
    """`size` rows of `row`, of which the statement takes the first LIMIT (WHERE true: an upsert's
    ON CONFLICT may follow, see SQLite's "parsing ambiguity")."""
    return f"SELECT * FROM (VALUES {','.join([row] * size)}) WHERE true LIMIT ?"


def index_known_tail(conn: sqlite3.Connection, tail: dict[str, tuple[int, list[int]]], through: int,
                     expected: int) -> bool:
    """Within the caller's transaction: index the tail from what the writer kept of it, `tail` (stream ->
    its first id and its seqs after `expected`, through seq `through`). False, indexing nothing, when
    indexed_through is not `expected`: another opener indexed part of it (see index_tail)."""
    if conn.execute(f"SELECT {INDEXED_THROUGH}").fetchone()[0] != expected:
        return False
    params: list[Any] = []
    for stream in sorted(tail):
        first_id, seqs = tail[stream]
        for start in range(0, len(seqs), BACKLOG_BATCH):  # a row lists BACKLOG_BATCH seqs at most
            listed = seqs[start:start + BACKLOG_BATCH]
            params += (stream, first_id + start + len(listed) - 1, first_id + start, listed[-1],
                       orjson.dumps(listed).decode())
    insert_rows(conn, _INSERT_INDEX_ROWS, "(?,?,?,?,?)", params, 5)
    conn.execute(_SAVE_INDEXED_THROUGH, (str(through),))
    return True


# Events per batch at most when a backlog is indexed at once (an upgrade, a tail left by failed
# batches): a read sorts a whole row's seqs, so no row may list a stream's whole history.
BACKLOG_BATCH = 8192


def index_tail(conn: sqlite3.Connection, through: int, *, recovering: bool = False) -> None:
    """Within the caller's transaction: index the tail's events up to seq `through`, the last committed,
    in batches of at most BACKLOG_BATCH seqs. `recovering`: indexed_through may be behind (a file whose
    meta was lost), skip what is indexed."""
    start = conn.execute(f"SELECT {INDEXED_THROUGH}").fetchone()[0]
    for upto in [*range(start + BACKLOG_BATCH, through, BACKLOG_BATCH), through]:
        conn.execute(_INDEX_TAIL.format(_NOT_INDEXED if recovering else ""), (upto,))
        conn.execute(_SAVE_INDEXED_THROUGH, (str(upto),))


# The seqs of the indexed events of the streams in `{}` (placeholders), for `seq IN (...)`.
INDEXED_SEQS = "SELECT j.value FROM stream_index b, json_each(b.seqs) j WHERE b.stream IN ({})"
# The id of stream ?1's oldest indexed event: in its first row (a row goes when all its events have),
# after the events a trim by count removed from that row, which are its first ones.
OLDEST_INDEXED = ("(SELECT e.id FROM events e WHERE e.seq IN (SELECT value FROM json_each((SELECT seqs FROM "
                  "stream_index WHERE stream = ?1 ORDER BY last_id LIMIT 1))) ORDER BY e.seq LIMIT 1)")
_STREAM_ROWS = "SELECT first_id, seqs FROM stream_index WHERE stream = ? AND last_id > ? ORDER BY last_id"
_LISTED_EVENTS = "SELECT id, ts, payload FROM events WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq"
_TAIL_EVENTS = f"SELECT id, ts, payload FROM events WHERE {TAIL} AND stream = ? AND id > ? ORDER BY id LIMIT ?"

# A stream's tail as the writer of this process lists it (SqliteWriter.known_tail), given the stream,
# the snapshot's last seq, an id and a count: indexed_through, the last seq it listed, the stream's
# first id in the tail, how many of its listed events the snapshot holds, and the seqs of up to
# count of those after the id.
KnownTail = Callable[[str, int, int, int], tuple[int, int, int, int, list[int]]]
_SNAPSHOT = f"SELECT {INDEXED_THROUGH}, (SELECT COALESCE(MAX(seq), 0) FROM events)"


def tail_in_snapshot(conn: sqlite3.Connection, stream: str, known_tail: KnownTail | None, after: int = 0,
                     limit: int = 0) -> tuple[int, int, list[int]] | None:
    """The first statement of the caller's read transaction: `stream`'s events in the tail that its
    snapshot sees, from the writer's list, as (their first id, how many, the seqs of the first `limit`
    after id `after`): no scan of the tail, and no copy of more than a read takes. None when the list
    cannot tell (no writer here, it indexed the tail since the snapshot began, or the snapshot holds
    events another process's writer appended): then scan.

    The list is taken after the snapshot began, and the writer lists events before committing them,
    so it holds every tail event the snapshot sees: those up to the snapshot's last seq, all there (a
    trim indexes the tail before it deletes, which changes indexed_through)."""
    through, last_seq = conn.execute(_SNAPSHOT).fetchone()
    if known_tail is None:
        return None
    base, listed_through, first_id, count, part = known_tail(stream, last_seq, after, limit)
    if base != through or last_seq > listed_through:
        return None
    return first_id, count, part


def read_stream(conn: sqlite3.Connection, stream: str, after: int, limit: int,
                known_tail: KnownTail | None = None) -> list[tuple[int, float, bytes]]:
    """Within the caller's read transaction (one snapshot): (id, ts, payload) of `stream`'s first `limit`
    events after id `after`, from the index's rows, then the tail (see tail_in_snapshot).

    A row's events have the ids first_id, first_id + 1 ... in the order of their seqs (a batch indexes
    a run of each stream's ids), so the event with id `after` + 1 is at a known place among the sorted
    seqs and a read fetches only what it returns, however long the row (a busy stream's row holds a
    whole batch). Seqs of events a trim removed are found missing, and passed over. The writer's list
    of the tail is read the same way, as a last row."""
    tail = tail_in_snapshot(conn, stream, known_tail, after, limit)
    found: list[tuple[int, float, bytes]] = []
    wanted: list[int] = []  # seqs to fetch: the stream's next events, in id order (and seq order)

    def fetch() -> None:
        found.extend(conn.execute(_LISTED_EVENTS, (orjson.dumps(wanted),)).fetchall())
        wanted.clear()

    def rows() -> Iterator[tuple[int, list[int]]]:  # row by row, as far as needed
        for first_id, listed in conn.execute(_STREAM_ROWS, (stream, after)):
            yield first_id, sorted(orjson.loads(listed))
        if tail is not None and tail[2]:
            yield max(tail[0], after + 1), tail[2]  # its part after `after`

    for first_id, seqs in rows():
        at = max(0, after + 1 - first_id)
        while at < len(seqs) and len(found) < limit:
            take = seqs[at:at + limit - len(found) - len(wanted)]
            at += len(take)
            wanted += take
            if len(found) + len(wanted) >= limit:
                fetch()  # fewer than taken when some were trimmed: take more
        if len(found) >= limit:
            return found
    if wanted:
        fetch()
    if tail is not None:
        return found
    return found + conn.execute(_TAIL_EVENTS, (stream, after, limit - len(found))).fetchall()


# A stream's last id (its saved counter, its newest indexed event, or its newest in the tail, whichever
# is later) and its oldest id held (None: it holds none), in one statement; and the same without the tail.
_INDEXED_LATEST = ("COALESCE((SELECT last_id FROM streams WHERE stream = ?1), 0), "
                   "COALESCE((SELECT MAX(last_id) FROM stream_index WHERE stream = ?1), 0)")
_BOUNDS = (f"SELECT MAX({_INDEXED_LATEST}, COALESCE((SELECT MAX(id) FROM events WHERE {TAIL} AND stream = ?1), 0)), "
           f"COALESCE({OLDEST_INDEXED}, (SELECT MIN(id) FROM events WHERE {TAIL} AND stream = ?1))")
_INDEXED_BOUNDS = f"SELECT MAX({_INDEXED_LATEST}), {OLDEST_INDEXED}"


def stream_bounds(conn: sqlite3.Connection, stream: str, known_tail: KnownTail | None = None) -> tuple[int, int | None]:
    """Within the caller's read transaction: `stream`'s latest id (0: none ever) and its oldest id
    held (None: none held), the tail found as read_stream finds it."""
    tail = tail_in_snapshot(conn, stream, known_tail)
    if tail is None:
        return conn.execute(_BOUNDS, (stream,)).fetchone()
    latest, oldest = conn.execute(_INDEXED_BOUNDS, (stream,)).fetchone()
    first_id, count, _ = tail
    if count:
        latest = max(latest, first_id + count - 1)
        oldest = first_id if oldest is None else oldest
    return latest, oldest


# The distinct indexed streams, one index seek each (a skip scan of the key), as `names`.
INDEXED_STREAMS = (
    "WITH RECURSIVE names(stream) AS (SELECT MIN(stream) FROM stream_index UNION ALL "
    "SELECT (SELECT MIN(stream) FROM stream_index WHERE stream > names.stream) FROM names "
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
    elif _columns(conn, "events_by_stream"):
        _reindex(conn, path)
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _rebuild(conn: sqlite3.Connection, path: str) -> None:
    """A file of layout 1 or 2: its events copied into this layout in one transaction, in (ts, stream, id)
    order, the order read_range gives them (a crash part way leaves the old file as it was)."""
    count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    log.warning("%s: upgrading the event log's %d events to layout %d (once)", path, count, SCHEMA_VERSION)
    with immediate_transaction(conn):
        conn.execute("DROP INDEX IF EXISTS events_by_time")
        conn.execute("ALTER TABLE events RENAME TO events_before_3")
        _create_tables(conn)
        conn.execute("INSERT INTO events (stream, id, ts, payload) "
                     "SELECT stream, id, ts, payload FROM events_before_3 ORDER BY ts, stream, id")
        conn.execute("DROP TABLE events_before_3")
        _index_everything(conn)


def _reindex(conn: sqlite3.Connection, path: str) -> None:
    """A file of layout 3: its events stay, its per-stream index (a row per event) is made again, in one
    transaction (a crash part way leaves the old file as it was)."""
    count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    log.warning("%s: indexing the event log's %d events again for layout %d (once)", path, count, SCHEMA_VERSION)
    with immediate_transaction(conn):
        conn.execute("DROP TABLE events_by_stream")
        _create_tables(conn)
        _index_everything(conn)


def _create_tables(conn: sqlite3.Connection) -> None:
    """The schema's missing tables, within the caller's transaction (executescript would commit first)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _index_everything(conn: sqlite3.Connection) -> None:
    """Within an upgrade's transaction: index every event from the first, and mark the file as this layout."""
    through = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    conn.execute("UPDATE meta SET value = '0' WHERE key = 'indexed_through'")
    index_tail(conn, through)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A snapshot for several statements of a reader (BEGIN: the first read fixes what they all see)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


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
