"""SQLite's own cost per event-log event: the log's layout against the one before, no broker, no threads.

    python bench/sqlite_schema.py [--streams 1000] [--payload 64] [--commits 1500] [--repeat 2] [--reads 100]

Each variant gets a fresh file in WAL mode with synchronous=NORMAL, as the log opens it, and
`--commits` multi-row INSERTs of 100 events to random streams of `--streams` (the point-to-point
shape), with a PASSIVE checkpoint every 30 commits from the same connection. It reports, per event,
the CPU of building each commit's parameters in Python (ids, rows or a packed chunk), of the INSERT
statements, of bringing the per-stream index up to date (batches) and of the checkpoints; then the
wall time of reading every event of `--reads` streams, each in one go, as a replay does. What SQLite
and the Python that feeds it cost, without the broker or threads (bench/sqlite_appends.py measures
the whole log).

Variants:
  layout-2       events keyed by (stream, id), as the log kept them before: each point-to-point
                 event dirties its own stream's leaf of that index
  layout-3       events in commit order, a per-stream index with a row per event brought up to date
                 every INDEX_BATCH events, sorted
  layout-4       the log's layout (eventlog/sqlite_layout.py): the same, but the index's batch
                 writes one row per stream, listing the stream's new events, made (as the log's
                 writer makes it) from the seqs it kept of each stream's tail
  layout-4-2k    the same, indexed every 2,048 events
  layout-4-32k   the same, indexed every 32,768 events
  chunks         not the log's layout, a candidate: one row per commit holding its events packed
                 (stream numbers, ids, lengths, then the payloads), and a per-stream index made every
                 INDEX_BATCH events of one row per stream: its first and last id and the commits that
                 hold them. A read fetches those commits and picks its stream's events out of them
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import struct
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cometd_broker.eventlog.sqlite_layout import SCHEMA, index_known_tail, read_stream, read_transaction
from cometd_broker.eventlog.sqlite_writer import INDEX_BATCH

LAYOUT_2 = """
CREATE TABLE events (stream TEXT NOT NULL, id INTEGER NOT NULL, ts REAL NOT NULL, payload BLOB NOT NULL,
                     PRIMARY KEY (stream, id));
CREATE INDEX events_by_time ON events (ts, stream, id);
"""
# Layout 3 (eventlog/sqlite_layout.py before layout 4), for comparison.
LAYOUT_3 = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, id INTEGER NOT NULL, ts REAL NOT NULL,
                     payload BLOB NOT NULL);
CREATE INDEX events_by_time ON events (ts, stream, id);
CREATE TABLE events_by_stream (stream TEXT NOT NULL, id INTEGER NOT NULL, seq INTEGER NOT NULL,
                               PRIMARY KEY (stream, id)) WITHOUT ROWID;
"""
LAYOUT_3_INDEX = ("INSERT INTO events_by_stream (stream, id, seq) SELECT stream, id, seq FROM events "
                  "WHERE seq > ? ORDER BY stream, id")
LAYOUT_3_READ = ("SELECT e.id, e.payload FROM events_by_stream b JOIN events e ON e.seq = b.seq WHERE b.stream = ?1 "
                 "UNION ALL SELECT id, payload FROM events WHERE seq > ?2 AND stream = ?1")
CHUNKS = """
CREATE TABLE chunks (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, events BLOB NOT NULL);
CREATE TABLE chunk_index (stream INTEGER NOT NULL, last_id INTEGER NOT NULL, first_id INTEGER NOT NULL,
                          chunks BLOB NOT NULL, PRIMARY KEY (stream, last_id)) WITHOUT ROWID;
"""
VARIANTS: dict[str, int] = {  # name: events per index batch (0: layout 2, indexed as it is written)
    "layout-2": 0,
    "layout-3": INDEX_BATCH,
    "layout-4": INDEX_BATCH,
    "layout-4-2k": 2048,
    "layout-4-32k": 32768,
    "chunks": INDEX_BATCH,
}
ROWS = 100  # events per commit
Costs = tuple[float, float, float, float, float]  # us per event: prepare, insert, index, checkpoint; read ms


def stream_name(number: int) -> str:
    return f"/v2/me/agent{number}/notifications"


def open_file(path: str, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.executescript(schema)
    return conn


def run(name: str, args: argparse.Namespace, folder: str) -> Costs:
    if name == "chunks":
        return run_chunks(args, folder)
    batch = VARIANTS[name]
    layout_3 = name == "layout-3"
    conn = open_file(os.path.join(folder, f"{name}.db"), LAYOUT_3 if layout_3 else SCHEMA if batch else LAYOUT_2)
    columns = "(seq, stream, id, ts, payload)" if batch else "(stream, id, ts, payload)"
    row = "(?,?,?,?,?)" if batch else "(?,?,?,?)"
    insert = f"INSERT INTO events {columns} VALUES " + ",".join([row] * ROWS)
    payload = b"x" * args.payload
    last: dict[str, int] = {}
    rng = random.Random(1)  # every variant gets the same streams in the same order
    seq = unindexed = indexed_through = 0
    tail: dict[str, tuple[int, list[int]]] = {}  # what the writer keeps of the tail (layout 4)
    preparing = inserting = indexing = checkpointing = 0.0
    for commit in range(args.commits):
        streams = [stream_name(rng.randrange(args.streams)) for _ in range(ROWS)]
        started = time.process_time()
        rows: list[object] = []
        now = time.time()
        for stream in streams:
            last[stream] = last.get(stream, 0) + 1
            seq += 1
            rows += (seq, stream, last[stream], now, payload) if batch else (stream, last[stream], now, payload)
        if batch and not layout_3:
            for stream, row_seq, row_id in zip(rows[1::5], rows[0::5], rows[2::5], strict=True):
                tail.setdefault(stream, (row_id, []))[1].append(row_seq)
        preparing += time.process_time() - started
        started = time.process_time()
        conn.execute(insert, rows)
        inserting += time.process_time() - started
        unindexed += ROWS
        if batch and unindexed >= batch:
            started = time.process_time()
            conn.execute("BEGIN IMMEDIATE")
            if layout_3:
                conn.execute(LAYOUT_3_INDEX, (indexed_through,))
            else:  # as the log's writer does
                index_known_tail(conn, tail, seq, indexed_through)
                tail.clear()
            conn.execute("COMMIT")
            indexing += time.process_time() - started
            unindexed, indexed_through = 0, seq
        if commit % 30 == 29:
            started = time.process_time()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            checkpointing += time.process_time() - started
    def read(number: int) -> int:
        if layout_3:  # the index, then the tail
            return len(conn.execute(LAYOUT_3_READ, (stream_name(number), indexed_through)).fetchall())
        if batch:  # as the log reads
            with read_transaction(conn):
                return len(read_stream(conn, stream_name(number), 0, 1_000_000))
        return len(conn.execute("SELECT id, payload FROM events WHERE stream = ? ORDER BY id",
                                (stream_name(number),)).fetchall())

    reading = time_reads(args, read)
    conn.close()
    events = args.commits * ROWS
    return (preparing / events * 1e6, inserting / events * 1e6, indexing / events * 1e6,
            checkpointing / events * 1e6, reading)


def time_reads(args: argparse.Namespace, read: object) -> float:
    """Milliseconds per read of every event of one stream, over --reads streams."""
    rng = random.Random(2)
    started = time.perf_counter()
    for _ in range(args.reads):
        if not read(rng.randrange(args.streams)):  # type: ignore[operator]
            raise AssertionError("a stream read nothing")
    return (time.perf_counter() - started) / args.reads * 1e3


def run_chunks(args: argparse.Namespace, folder: str) -> Costs:
    """The `chunks` candidate: a commit is one row, the per-stream index one row per stream and batch."""
    conn = open_file(os.path.join(folder, "chunks.db"), CHUNKS)
    payload = b"x" * args.payload
    numbers: dict[str, int] = {}  # stream -> its number
    last: dict[int, int] = {}  # stream number -> last id
    tail: dict[int, tuple[int, array[int]]] = {}  # stream number -> (first id, commits) since the last batch
    rng = random.Random(1)
    unindexed = 0
    preparing = inserting = indexing = checkpointing = 0.0
    for commit in range(args.commits):
        streams = [stream_name(rng.randrange(args.streams)) for _ in range(ROWS)]
        payloads = [payload] * ROWS
        started = time.process_time()
        seq = commit + 1  # one row per commit
        keys, ids = [], []
        for stream in streams:
            key = numbers.get(stream)
            if key is None:
                key = numbers[stream] = len(numbers) + 1
            id_ = last[key] = last.get(key, 0) + 1
            keys.append(key)
            ids.append(id_)
            held = tail.get(key)
            if held is None:
                tail[key] = (id_, array("q", (seq,)))
            elif held[1][-1] != seq:
                held[1].append(seq)
        n = len(keys)
        blob = struct.pack(f"<I{n}I{n}I{n}I", n, *keys, *ids, *map(len, payloads)) + b"".join(payloads)
        preparing += time.process_time() - started
        started = time.process_time()
        conn.execute("INSERT INTO chunks VALUES (?, ?, ?)", (seq, time.time(), blob))
        inserting += time.process_time() - started
        unindexed += n
        if unindexed >= INDEX_BATCH:
            started = time.process_time()
            rows = [(key, last[key], first, seqs.tobytes()) for key, (first, seqs) in sorted(tail.items())]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO chunk_index VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
            indexing += time.process_time() - started
            tail.clear()
            unindexed = 0
        if commit % 30 == 29:
            started = time.process_time()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            checkpointing += time.process_time() - started

    def read(number: int) -> int:
        key = numbers[stream_name(number)]
        seqs = array("q")
        for (packed,) in conn.execute("SELECT chunks FROM chunk_index WHERE stream = ? ORDER BY last_id", (key,)):
            seqs.frombytes(packed)
        seqs.extend(tail[key][1] if key in tail else ())
        found = []
        for (blob,) in conn.execute(f"SELECT events FROM chunks WHERE seq IN ({','.join(map(str, seqs))})"):
            n = struct.unpack_from("<I", blob)[0]
            head = struct.unpack_from(f"<{3 * n}I", blob, 4)
            at = 4 + 12 * n
            for i in range(n):
                length = head[2 * n + i]
                if head[i] == key:
                    found.append((head[n + i], blob[at:at + length]))
                at += length
        return len(found)

    reading = time_reads(args, read)
    conn.close()
    events = args.commits * ROWS
    return (preparing / events * 1e6, inserting / events * 1e6, indexing / events * 1e6,
            checkpointing / events * 1e6, reading)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--payload", type=int, default=64, help="bytes per event")
    p.add_argument("--commits", type=int, default=1500)
    p.add_argument("--repeat", type=int, default=2, help="rounds over every variant, alternating")
    p.add_argument("--reads", type=int, default=100, help="streams read in full after the writes")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    print(f"SQLite {sqlite3.sqlite_version}; {args.commits} commits of {ROWS} events to {args.streams} streams, "
          f"{args.payload}-byte payloads; CPU per event, us; then ms per read of a whole stream")
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-schema-") as folder:
        for round_ in range(args.repeat):
            for name in names:
                preparing, inserting, indexing, checkpointing, reading = run(name, args, folder)
                for suffix in ("", "-wal", "-shm"):
                    Path(os.path.join(folder, f"{name}.db{suffix}")).unlink(missing_ok=True)
                total = preparing + inserting + indexing + checkpointing
                print(f"  round {round_ + 1} {name:13} prepare {preparing:4.1f}  insert {inserting:5.1f}  "
                      f"index {indexing:5.1f}  checkpoint {checkpointing:5.1f}  total {total:5.1f}  "
                      f"read {reading:6.2f} ms", flush=True)


if __name__ == "__main__":
    main()
