"""SQLite's own cost per event-log event: the log's layout against the one before, no broker, no threads.

    python bench/sqlite_schema.py [--streams 1000] [--payload 64] [--commits 1500] [--repeat 2]

Each variant gets a fresh file in WAL mode with synchronous=NORMAL, as the log opens it, and
`--commits` multi-row INSERTs of 100 events to random streams of `--streams` (the point-to-point
shape), with a PASSIVE checkpoint every 30 commits from the same connection. It reports the CPU the
INSERT statements take per event, the CPU of bringing the per-stream index up to date (layout 3's
batches) and the CPU the checkpoints take: what SQLite itself costs, before any Python around it
(bench/sqlite_appends.py measures the whole log, threads included).

Variants:
  layout-2       events keyed by (stream, id), as the log kept them before: each point-to-point
                 event dirties its own stream's leaf of that index
  layout-3       the log's layout (eventlog/sqlite_layout.py): events in commit order, the
                 per-stream index brought up to date every INDEX_BATCH events, sorted
  layout-3-2k    the same, indexed every 2,048 events
  layout-3-32k   the same, indexed every 32,768 events
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cometd_broker.eventlog.sqlite_layout import SCHEMA, index_tail
from cometd_broker.eventlog.sqlite_writer import INDEX_BATCH

LAYOUT_2 = """
CREATE TABLE events (stream TEXT NOT NULL, id INTEGER NOT NULL, ts REAL NOT NULL, payload BLOB NOT NULL,
                     PRIMARY KEY (stream, id));
CREATE INDEX events_by_time ON events (ts, stream, id);
"""
VARIANTS: dict[str, int] = {  # name: events per index batch (0: layout 2, indexed as it is written)
    "layout-2": 0,
    "layout-3": INDEX_BATCH,
    "layout-3-2k": 2048,
    "layout-3-32k": 32768,
}
ROWS = 100  # events per commit


def run(name: str, args: argparse.Namespace, folder: str) -> tuple[float, float, float]:
    batch = VARIANTS[name]
    path = os.path.join(folder, f"{name}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.executescript(SCHEMA if batch else LAYOUT_2)
    columns = "(seq, stream, id, ts, payload)" if batch else "(stream, id, ts, payload)"
    row = "(?,?,?,?,?)" if batch else "(?,?,?,?)"
    insert = f"INSERT INTO events {columns} VALUES " + ",".join([row] * ROWS)
    payload = b"x" * args.payload
    last: dict[str, int] = {}
    rng = random.Random(1)  # every variant gets the same streams in the same order
    seq = unindexed = 0
    inserting = indexing = checkpointing = 0.0
    for commit in range(args.commits):
        rows: list[object] = []
        now = time.time()
        for _ in range(ROWS):
            stream = f"/v2/me/agent{rng.randrange(args.streams)}/notifications"
            last[stream] = last.get(stream, 0) + 1
            seq += 1
            rows += (seq, stream, last[stream], now, payload) if batch else (stream, last[stream], now, payload)
        started = time.process_time()
        conn.execute(insert, rows)
        inserting += time.process_time() - started
        unindexed += ROWS
        if batch and unindexed >= batch:
            started = time.process_time()
            conn.execute("BEGIN IMMEDIATE")
            index_tail(conn, seq)
            conn.execute("COMMIT")
            indexing += time.process_time() - started
            unindexed = 0
        if commit % 30 == 29:
            started = time.process_time()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            checkpointing += time.process_time() - started
    conn.close()
    events = args.commits * ROWS
    return inserting / events * 1e6, indexing / events * 1e6, checkpointing / events * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--payload", type=int, default=64, help="bytes per event")
    p.add_argument("--commits", type=int, default=1500)
    p.add_argument("--repeat", type=int, default=2, help="rounds over every variant, alternating")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    print(f"SQLite {sqlite3.sqlite_version}; {args.commits} commits of {ROWS} events to {args.streams} streams, "
          f"{args.payload}-byte payloads; CPU per event, us")
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-schema-") as folder:
        for round_ in range(args.repeat):
            for name in names:
                inserting, indexing, checkpointing = run(name, args, folder)
                for suffix in ("", "-wal", "-shm"):
                    Path(os.path.join(folder, f"{name}.db{suffix}")).unlink(missing_ok=True)
                print(f"  round {round_ + 1} {name:13} insert {inserting:5.1f}  index {indexing:5.1f}  "
                      f"checkpoint {checkpointing:5.1f}  total {inserting + indexing + checkpointing:5.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
