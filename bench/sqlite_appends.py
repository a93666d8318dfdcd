"""The SQLite event log's own cost, in process: appends of point-to-point publish batches.

    python bench/sqlite_appends.py                       # checkpoints on their own thread (the default)
    python bench/sqlite_appends.py --checkpoints inline  # as SQLite does by itself: inside commits
    python bench/sqlite_appends.py --batch 40 --gap 0.005 --cache-mb 64   # a larger page cache for the writer
    python bench/sqlite_appends.py --batch 80 --gap 0.01 --checkpoint-period 1   # checkpoints every second
    python bench/sqlite_appends.py --batch 1 --batch-max 1000 --gap 0     # sizes of a saturated group commit

Appends `--appends` batches of `--batch` events (with `--batch-max`, of a size drawn from `--batch` to it
for each, as a saturated broker's group commits vary) to random streams of `--streams`, one batch every
`--gap` seconds, as a long-polling publisher's batches arrive, and reports the process's CPU per
event (every thread: the loop, the writer, the checkpointer), the wall time, the append latency and
the WAL's size. `inline` turns the checkpointer off and gives the writer's connection SQLite's own
wal_autocheckpoint (1,000 pages), to compare with how the log worked before.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cometd_broker.eventlog.sqlite import SqliteEventLog
from cometd_broker.eventlog.sqlite_checkpointer import CHECKPOINT_PERIOD

PAYLOAD = b'{"channel":"/p2p/123","data":{"s":1,"t":1234.5,"k":1},"id":"12"}'


async def run(args: argparse.Namespace, folder: str) -> str:
    path = os.path.join(folder, "events.db")
    log = SqliteEventLog(path, checkpoint_period=args.checkpoint_period)
    if args.checkpoints == "inline":
        await log._checkpointer.stop()
        log._writer._conn.execute("PRAGMA wal_autocheckpoint = 1000")
    if args.cache_mb:  # the writer's page cache (SQLite's default is 2 MiB); nothing has run on it yet
        log._writer._conn.execute(f"PRAGMA cache_size = -{args.cache_mb * 1024}")
    latencies = []
    sizes = [random.randint(args.batch, max(args.batch, args.batch_max or 0)) for _ in range(args.appends)]
    wall, cpu = time.perf_counter(), time.process_time()
    for size in sizes:
        started = time.perf_counter()
        await log.append_many([(f"/p2p/{random.randrange(args.streams)}", PAYLOAD) for _ in range(size)])
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(args.gap)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    wal = os.path.getsize(path + "-wal")
    stats = log.stats()
    await log.close()
    latencies.sort()
    events = sum(sizes)
    return (f"{args.checkpoints}, checkpoint period {args.checkpoint_period} s, "
            f"cache {args.cache_mb or 'default'} MiB: {cpu / events * 1e6:.1f} us CPU per event (all threads), "
            f"{wall:.1f} s wall, "
            f"append p50 {latencies[len(latencies) // 2]:.1f} ms, p99 {latencies[len(latencies) * 99 // 100]:.1f} ms, "
            f"max {latencies[-1]:.1f} ms; WAL {wal / 1e6:.0f} MB, {stats['commits']} commits, "
            f"{stats['checkpoints']} checkpoints ({stats['checkpoints_forced']} holding the writer back)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", choices=("thread", "inline"), default="thread")
    p.add_argument("--appends", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batch-max", type=int, help="draw each batch's size from --batch to this")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--gap", type=float, default=0.001, help="seconds between appends")
    p.add_argument("--checkpoint-period", type=float, default=CHECKPOINT_PERIOD,
                   help="seconds between the checkpointer's passes under load (the log's default)")
    p.add_argument("--cache-mb", type=int, default=0, help="the writer's page cache, MiB (0: SQLite's default)")
    args = p.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-sqlite-appends-")
    try:
        print(asyncio.run(run(args, folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
