"""SQLite's own cost per event-log event: the log's schema against alternatives, no broker, no threads.

    python bench/sqlite_schema.py [--streams 1000] [--payload 64] [--commits 1500] [--repeat 2]

Each variant gets a fresh file in WAL mode with synchronous=NORMAL, as the log opens it, and
`--commits` multi-row INSERTs of 100 events to random streams of `--streams` (the point-to-point
shape, where each event lands in its own stream's leaf of the (stream, id) index), with a PASSIVE
checkpoint every 30 commits from the same connection. It reports the CPU the INSERT statements
take per event and the CPU the checkpoints take per event: what SQLite itself costs, before any
Python around it (bench/sqlite_appends.py measures the whole log, threads included).

Variants:
  current        the event log's schema (eventlog/sqlite.py)
  no-time-index  without the (ts, stream, id) index that read_range and age trimming use
  int-stream     streams as integers (a table mapping names to numbers would be needed)
  without-rowid  the events clustered on (stream, id), payloads inside the index's leaves
  page-1k        the current schema on 1 KiB pages (less written per dirtied leaf)
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

from cometd_broker.eventlog.sqlite import _SCHEMA

_TIME_INDEX = "CREATE INDEX IF NOT EXISTS events_by_time ON events (ts, stream, id);"
assert _TIME_INDEX in _SCHEMA, "the log's schema changed: update this benchmark's variants"

VARIANTS: dict[str, tuple[str, int]] = {  # name: (schema, page size)
    "current": (_SCHEMA, 4096),
    "no-time-index": (_SCHEMA.replace(_TIME_INDEX, ""), 4096),
    "int-stream": (_SCHEMA.replace("stream  TEXT    NOT NULL,\n    id", "stream  INTEGER NOT NULL,\n    id", 1), 4096),
    "without-rowid": (_SCHEMA.replace("PRIMARY KEY (stream, id)\n)", "PRIMARY KEY (stream, id)\n) WITHOUT ROWID", 1),
                      4096),
    "page-1k": (_SCHEMA, 1024),
}
assert all(schema != _SCHEMA for name, (schema, _) in VARIANTS.items() if name not in ("current", "page-1k")), \
    "a variant no longer changes the log's schema: update this benchmark"
ROWS = 100  # events per commit


def run(name: str, args: argparse.Namespace, folder: str) -> tuple[float, float]:
    schema, page_size = VARIANTS[name]
    path = os.path.join(folder, f"{name}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {page_size}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.executescript(schema)
    integer = name == "int-stream"
    payload = b"x" * args.payload
    insert = "INSERT INTO events (stream, id, ts, payload) VALUES " + ",".join(["(?,?,?,?)"] * ROWS)
    last: dict[object, int] = {}
    rng = random.Random(1)  # every variant gets the same streams in the same order
    inserting = checkpointing = 0.0
    for commit in range(args.commits):
        rows: list[object] = []
        now = time.time()
        for _ in range(ROWS):
            number = rng.randrange(args.streams)
            stream = number if integer else f"/v2/me/agent{number}/notifications"
            last[stream] = last.get(stream, 0) + 1
            rows += (stream, last[stream], now, payload)
        started = time.process_time()
        conn.execute(insert, rows)
        inserting += time.process_time() - started
        if commit % 30 == 29:
            started = time.process_time()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            checkpointing += time.process_time() - started
    conn.close()
    events = args.commits * ROWS
    return inserting / events * 1e6, checkpointing / events * 1e6


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
                inserting, checkpointing = run(name, args, folder)
                os.remove(os.path.join(folder, f"{name}.db"))
                for suffix in ("-wal", "-shm"):
                    Path(os.path.join(folder, f"{name}.db{suffix}")).unlink(missing_ok=True)
                print(f"  round {round_ + 1} {name:14} insert {inserting:5.1f}  checkpoint {checkpointing:5.1f}  "
                      f"total {inserting + checkpointing:5.1f}", flush=True)


if __name__ == "__main__":
    main()
