"""The event log stores: one behaviour, tested against every store, plus SQLite's own promises."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from bayeux_helpers import RecordingResponder, hold_loop_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cometd_broker.eventlog import (
    KEEP_ALL,
    Bounds,
    Event,
    EventLog,
    EventLogClosed,
    EventLogUnavailable,
    MemoryEventLog,
    Retention,
    RetentionTask,
    SqliteEventLog,
    open_event_log,
    sqlite_layout,
)
from cometd_broker.eventlog.sqlite_layout import CACHED_STATEMENTS, MAX_ROWS, ROW_STEP, SCHEMA_VERSION, insert_rows
from cometd_broker.eventlog.sqlite_writer import INDEX_BATCH

ROOT = Path(__file__).resolve().parents[1]
STORES = ["memory", "sqlite"]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeLog = Callable[..., EventLog]


@pytest.fixture(params=STORES)
async def make_log(request, tmp_path):
    """`make_log(retention=..., clock=...)` -> a fresh store of the parametrized kind, closed after the test.

    For SQLite every call opens the same file, so calling it again after close() is a restart.
    """
    opened: list[EventLog] = []

    def make(retention: Retention = KEEP_ALL, clock: Callable[[], float] | None = None) -> EventLog:
        kwargs = {} if clock is None else {"clock": clock}
        if request.param == "memory":
            log: EventLog = MemoryEventLog(retention, **kwargs)
        else:
            log = SqliteEventLog(tmp_path / "events.db", retention, **kwargs)
        opened.append(log)
        return log

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for log in opened:
        await log.close()


def indexed_events(conn: sqlite3.Connection) -> int:
    """Events the SQLite log's per-stream index lists and the file holds (a row may still list events a
    trim by count removed); none may be listed twice."""
    listed, distinct, held = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT j.value), COUNT(e.seq) FROM stream_index, json_each(stream_index.seqs) j "
        "LEFT JOIN events e ON e.seq = j.value").fetchone()
    assert listed == distinct, "an event is in the index twice"
    # A row lists a run of its stream's ids: the k-th of its sorted seqs has id first_id + k.
    events = {seq: (stream, id_) for seq, stream, id_ in conn.execute("SELECT seq, stream, id FROM events")}
    for stream, first_id, last_id, last_seq, seqs in conn.execute(
            "SELECT stream, first_id, last_id, last_seq, seqs FROM stream_index"):
        seqs = sorted(orjson.loads(seqs))
        assert (len(seqs), seqs[-1]) == (last_id - first_id + 1, last_seq), f"{stream}: a row's ids and seqs disagree"
        for place, seq in enumerate(seqs):
            assert events.get(seq, (stream, first_id + place)) == (stream, first_id + place), f"{stream}: seq {seq}"
    return held


def ids_of(events: list[Event]) -> list[int]:
    return [event.id for event in events]


# ---- ids, reads, bounds ----------------------------------------------------------------------


async def test_ids_increase_per_stream_independently(make_log: MakeLog) -> None:
    log = make_log()
    assert await log.append("/a", [b"1", b"2"]) == [1, 2]
    assert await log.append("/b", [b"x"]) == [1]
    assert await log.append("/a", [b"3"]) == [3]
    assert await log.append("/b", [b"y", b"z"]) == [2, 3]
    assert await log.streams() == ["/a", "/b"]
    assert [(e.id, e.payload) for e in await log.read("/a", 0, 10)] == [(1, b"1"), (2, b"2"), (3, b"3")]
    assert all(event.stream == "/b" for event in await log.read("/b", 0, 10))


async def test_empty_append_creates_nothing(make_log: MakeLog) -> None:
    log = make_log()
    assert await log.append("/a", []) == []
    assert await log.streams() == []
    assert await log.bounds("/a") == (0, 0)


async def test_payloads_must_be_bytes(make_log: MakeLog) -> None:
    log = make_log()
    with pytest.raises(TypeError):
        await log.append("/a", [5])  # type: ignore[list-item]  # bytes(5) would be five zero bytes
    with pytest.raises(TypeError):
        await log.append("/a", b"not a list of payloads")
    assert await log.append("/a", [bytearray(b"ok"), memoryview(b"mv")]) == [1, 2]
    assert [e.payload for e in await log.read("/a", 0, 5)] == [b"ok", b"mv"]


async def test_read_pages_by_after_and_limit(make_log: MakeLog) -> None:
    log = make_log()
    await log.append("/a", [str(i).encode() for i in range(1, 11)])
    pages, after = [], 0
    while page := await log.read("/a", after, 3):
        pages.append(ids_of(page))
        after = page[-1].id
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert await log.read("/a", 10, 5) == []
    assert await log.read("/a", 4, 0) == []
    assert await log.read("/unknown", 0, 5) == []
    with pytest.raises(ValueError):
        await log.read("/a", 0, -1)


async def test_bounds(make_log: MakeLog) -> None:
    log = make_log()
    assert await log.bounds("/a") == Bounds(0, 0)
    assert (await log.bounds("/a")).empty
    await log.append("/a", [b"1", b"2", b"3"])
    bounds = await log.bounds("/a")
    assert bounds == (1, 3) and not bounds.empty
    assert bounds.covers(0) and bounds.covers(3)


# ---- retention -------------------------------------------------------------------------------


async def test_the_epoch_is_the_logs_and_comes_with_the_bounds(make_log: MakeLog) -> None:
    log = make_log()
    epoch = await log.epoch()
    assert isinstance(epoch, str) and epoch and await log.epoch() == epoch
    assert await log.bounds_with_epoch("/a") == (epoch, Bounds(0, 0))
    await log.append("/a", [b"1", b"2"])
    assert await log.bounds_with_epoch("/a") == (epoch, Bounds(1, 2))
    # Another open of the store: a memory log is a new log (a restart starts over); a durable or
    # shared store is the same log, with the same epoch.
    other = make_log()
    if make_log.kind == "memory":  # type: ignore[attr-defined]
        assert await other.epoch() != epoch
    else:
        assert await other.bounds_with_epoch("/a") == (epoch, Bounds(1, 2))


async def test_max_count_is_enforced_on_append(make_log: MakeLog) -> None:
    log = make_log(Retention(max_count=3))
    await log.append("/a", [b"1", b"2"])
    await log.append("/a", [b"3", b"4", b"5", b"6"])  # one batch larger than what is kept
    await log.append("/b", [b"x"])
    assert await log.bounds("/a") == (4, 6)
    assert ids_of(await log.read("/a", 0, 10)) == [4, 5, 6]
    assert await log.bounds("/b") == (1, 1)
    assert not (await log.bounds("/a")).covers(2)  # ids 3.. are not all there: resume would have a gap
    assert (await log.bounds("/a")).covers(3)
    assert await log.trim(now=10**12) == 0  # nothing more to drop by count, no max_age


async def test_trim_by_age(make_log: MakeLog) -> None:
    clock = FakeClock(100.0)
    log = make_log(Retention(max_age=60), clock=clock)
    await log.append("/a", [b"t100"])
    clock.now = 150.0
    await log.append("/a", [b"t150"])
    await log.append("/b", [b"t150"])
    clock.now = 200.0
    await log.append("/a", [b"t200"])
    assert await log.trim(now=160.0) == 0  # cutoff 100: an event exactly max_age old is kept
    assert await log.trim(now=200.0) == 1  # cutoff 140: drops /a#1
    assert await log.bounds("/a") == (2, 3)
    assert await log.trim(now=250.0) == 2  # cutoff 190: drops /a#2 and /b#1, keeps /a#3 (t200)
    assert await log.bounds("/a") == (3, 3)
    assert await log.bounds("/b") == (2, 1)
    assert [e.payload for e in await log.read("/a", 0, 10)] == [b"t200"]


async def test_trim_everything_never_reuses_ids(make_log: MakeLog) -> None:
    clock = FakeClock(0.0)
    log = make_log(Retention(max_age=10), clock=clock)
    await log.append("/a", [b"1", b"2", b"3"])
    assert await log.trim(now=100.0) == 3
    bounds = await log.bounds("/a")
    assert bounds == (4, 3) and bounds.empty  # oldest = latest + 1: the stream is known but empty
    assert bounds.covers(3) and not bounds.covers(2)
    assert await log.read("/a", 0, 10) == []
    assert await log.streams() == ["/a"]  # still known: it has a latest id
    clock.now = 100.0
    assert await log.append("/a", [b"4"]) == [4]
    assert await log.bounds("/a") == (4, 4)


async def test_timestamps_never_go_backwards_within_a_stream(make_log: MakeLog) -> None:
    clock = FakeClock(500.0)
    log = make_log(Retention(max_age=100), clock=clock)
    await log.append("/a", [b"1"])
    clock.now = 400.0  # the wall clock stepped back (NTP)
    await log.append("/a", [b"2"])
    await log.append("/b", [b"x"])
    events = await log.read("/a", 0, 10)
    assert [e.timestamp for e in events] == [500.0, 500.0]
    if make_log.kind == "redis":  # type: ignore[attr-defined]
        # One clock for the whole log (its processes' clocks differ): a new stream starts there too.
        assert (await log.read("/b", 0, 1))[0].timestamp == 500.0
        assert await log.trim(now=599.0) == 0
        assert await log.trim(now=601.0) == 3
        return
    assert (await log.read("/b", 0, 1))[0].timestamp == 400.0
    # So trimming by age drops a prefix and the retained ids stay contiguous.
    assert await log.trim(now=599.0) == 1  # only /b#1 (400) is older than 499
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2]


# ---- read_range ------------------------------------------------------------------------------


async def test_read_range_orders_filters_and_pages(make_log: MakeLog) -> None:
    clock = FakeClock(10.0)
    log = make_log(clock=clock)
    await log.append("/b", [b"b1"])
    await log.append("/a", [b"a1", b"a2"])
    clock.now = 20.0
    await log.append("/a", [b"a3"])
    await log.append("/c", [b"c1"])
    clock.now = 30.0
    await log.append("/b", [b"b2"])

    def keys(events: list[Event]) -> list[tuple[str, int]]:
        return [(e.stream, e.id) for e in events]

    everything = await log.read_range(limit=100)
    assert keys(everything) == [("/a", 1), ("/a", 2), ("/b", 1), ("/a", 3), ("/c", 1), ("/b", 2)]
    assert [e.sort_key for e in everything] == sorted(e.sort_key for e in everything)
    assert keys(await log.read_range(streams=["/b", "/zz"], limit=100)) == [("/b", 1), ("/b", 2)]
    assert await log.read_range(streams=[], limit=100) == []
    assert keys(await log.read_range(since=20.0, until=30.0, limit=100)) == [("/a", 3), ("/c", 1)]
    assert keys(await log.read_range(streams=["/a"], after_id=1, limit=100)) == [("/a", 2), ("/a", 3)]
    pages, after = [], None
    while page := await log.read_range(after=after, limit=4):
        pages.append(keys(page))
        after = page[-1].sort_key
    assert pages == [keys(everything[:4]), keys(everything[4:])]
    assert await log.read_range(limit=0) == []


# ---- concurrency -----------------------------------------------------------------------------


async def test_concurrent_appends_keep_order_and_unique_ids(make_log: MakeLog) -> None:
    log = make_log()
    tasks, per_task = 40, 25
    returned: dict[int, list[int]] = {}

    async def writer(task: int) -> None:
        stream = f"/s{task % 4}"
        returned[task] = [(await log.append(stream, [f"{task}:{n}".encode()]))[0] for n in range(per_task)]

    await asyncio.gather(*(writer(task) for task in range(tasks)))

    for task, ids in returned.items():
        assert ids == sorted(set(ids)), f"task {task} saw ids out of order"
    for s in range(4):
        events = await log.read(f"/s{s}", 0, 10_000)
        assert ids_of(events) == list(range(1, tasks // 4 * per_task + 1))  # unique, no gaps
        seen: dict[int, list[int]] = {}
        for event in events:
            task, n = map(int, event.payload.split(b":"))
            assert returned[task][n] == event.id  # the id returned is the id stored
            seen.setdefault(task, []).append(n)
        assert all(ns == list(range(per_task)) for ns in seen.values())  # each task's order kept
    if isinstance(log, SqliteEventLog):
        appends = tasks * per_task
        assert log.commits <= appends // 4, f"{log.commits} commits for {appends} appends: no group commit"


async def test_append_many_assigns_ids_per_stream_in_order(make_log: MakeLog) -> None:
    log = make_log()
    await log.append("/b", [b"b1"])
    ids = await log.append_many([("/a", b"a1"), ("/b", b"b2"), ("/a", b"a2"), ("/c", b"c1"), ("/a", b"a3")])
    assert ids == [1, 2, 2, 1, 3]
    assert [e.payload for e in await log.read("/a", 0, 10)] == [b"a1", b"a2", b"a3"]
    assert ids_of(await log.read("/b", 0, 10)) == [1, 2]
    assert await log.append_many([]) == []
    assert await log.streams() == ["/a", "/b", "/c"]  # the empty call created nothing
    with pytest.raises(TypeError):
        await log.append_many([("/a", "text")])  # type: ignore[list-item]
    assert (await log.bounds("/a")).latest == 3  # a refused call appended nothing


def reject_bad_payloads(path: Path) -> None:
    """Another connection installs a trigger that makes any insert of the payload b"bad" fail."""
    with sqlite3.connect(path) as other:
        other.execute(
            "CREATE TRIGGER reject BEFORE INSERT ON events WHEN NEW.payload = x'626164' "
            "BEGIN SELECT RAISE(ABORT, 'rejected'); END"
        )
    other.close()


class HeldWriter:
    """Another connection holding the file's write lock: the log's writer thread, once it has taken a
    job, waits for the lock, and every append made meanwhile queues for its next commit."""

    def __init__(self, path: Path) -> None:
        self.other = sqlite3.connect(path, isolation_level=None)
        self.other.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.other.execute("COMMIT")
        self.other.close()


async def busy_writer(log: SqliteEventLog, path: Path) -> tuple[HeldWriter, asyncio.Task[list[int]]]:
    """Make the writer thread busy with one append it cannot commit until the HeldWriter is released."""
    held = HeldWriter(path)
    blocker = asyncio.ensure_future(log.append("/blocker", [b"b"]))
    writer = log._writer
    for _ in range(500):  # until the thread has taken the blocker off the queue
        await asyncio.sleep(0.01)
        if not writer._thread.queued and not writer._thread.idle:
            break
    return held, blocker


async def test_sqlite_appends_made_while_a_commit_runs_share_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/warm", [b"up"])
    before = log.commits
    held, blocker = await busy_writer(log, path)
    calls = asyncio.gather(*(log.append(f"/s{n % 5}", [b"%d" % n]) for n in range(50)),
                           log.append_many([("/s0", b"m1"), ("/s9", b"m2")]))
    await asyncio.sleep(0.05)  # every append is queued behind the blocked commit
    held.release()
    results = await calls
    assert await blocker == [1]
    assert log.commits == before + 2  # the blocker's, then one for all the others
    assert [ids[0] for ids in results[:5]] == [1, 1, 1, 1, 1]  # in submission order within the commit
    assert results[-1] == [11, 1]
    assert ids_of(await log.read("/s0", 0, 100)) == list(range(1, 12))
    await log.close()


async def test_sqlite_an_append_reaches_an_idle_writer_at_once(tmp_path: Path) -> None:
    # Handed over when it is made, not a loop turn later: the thread commits it even while the loop
    # is blocked right after the append's first step.
    log = SqliteEventLog(tmp_path / "events.db")
    await log.append("/warm", [b"up"])
    before = log.commits
    append = asyncio.ensure_future(log.append("/a", [b"1"]))
    await asyncio.sleep(0)  # the append's first step runs: it is submitted and now awaits its commit
    hold_loop_until(lambda: log.commits > before)  # only the writer thread can move
    assert log.commits == before + 1
    assert await append == [1]
    await log.close()


async def test_sqlite_reap_runs_then_as_soon_as_the_commit_is_known(tmp_path: Path) -> None:
    # A commit's scheduled callback waits for the loop's turn to end; reap, called from within the turn,
    # settles it there, once, and the callback finds nothing left to do.
    log = SqliteEventLog(tmp_path / "events.db")
    await log.append("/warm", [b"up"])
    before = log.commits
    seen: list[list[int]] = []
    append = asyncio.ensure_future(log.append_many_then([("/a", b"1"), ("/a", b"2")],
                                                        lambda ids: seen.append(ids) or "delivered"))
    await asyncio.sleep(0)  # submitted
    hold_loop_until(lambda: log.commits > before)  # the loop is held in this turn, as a busy loop would be
    assert log.commits == before + 1
    assert seen == []  # committed, not yet known on the loop
    log.reap()
    assert seen == [[1, 2]]
    assert await append == "delivered"
    await asyncio.sleep(0.01)  # the scheduled callback has run meanwhile: it settled nothing twice
    assert seen == [[1, 2]]
    log.reap()  # nothing owed
    await log.close()


async def test_append_many_then_runs_before_the_caller_resumes(make_log: MakeLog) -> None:
    log = make_log()
    loop = asyncio.get_running_loop()
    turns = 0
    running = True

    def tick() -> None:  # counts loop turns: one call per turn
        nonlocal turns
        turns += 1
        if running:
            loop.call_soon(tick)

    tick()
    seen: list[tuple[str, list[int], int]] = []

    def then(ids: list[int]) -> str:
        seen.append(("then", ids, turns))
        return "delivered"

    assert await log.append_many_then([("/a", b"1"), ("/b", b"2"), ("/a", b"3")], then) == "delivered"
    resumed_at = turns
    running = False
    assert seen[0][:2] == ("then", [1, 1, 2])
    assert seen[0][2] <= resumed_at  # memory: in the same turn; SQLite: in the commit's callback, a turn earlier
    if make_log.kind == "sqlite":  # type: ignore[attr-defined]
        assert seen[0][2] < resumed_at
    assert await log.append_many_then([], lambda ids: ids) == []


async def test_append_many_then_passes_its_error_to_the_caller_and_keeps_the_events(make_log: MakeLog) -> None:
    log = make_log()

    def then(ids: list[int]) -> None:
        raise LookupError(f"dispatch failed for {ids}")

    with pytest.raises(LookupError, match=r"\[1\]"):
        await log.append_many_then([("/a", b"1")], then)
    assert ids_of(await log.read("/a", 0, 10)) == [1]  # recorded: the error is the caller's, not the log's


async def test_sqlite_append_many_then_runs_even_when_the_caller_was_cancelled(tmp_path: Path) -> None:
    # What is committed is delivered: a publisher that went away does not take its events' dispatch with it.
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    held, blocker = await busy_writer(log, path)
    delivered: list[list[int]] = []
    call = asyncio.ensure_future(log.append_many_then([("/a", b"1")], delivered.append))
    await asyncio.sleep(0.05)
    call.cancel()
    held.release()
    assert await blocker == [1]
    for _ in range(500):
        if delivered:
            break
        await asyncio.sleep(0.01)
    assert delivered == [[1]]
    assert call.cancelled()
    await log.close()


async def test_sqlite_a_failed_commit_fails_every_append_it_carried(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/a", [b"1"])
    reject_bad_payloads(path)
    held, blocker = await busy_writer(log, path)
    calls = [log.append("/a", [b"%d" % n]) for n in range(2, 12)]
    calls.append(log.append_many([("/b", b"fine"), ("/a", b"bad")]))
    gathered = asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.05)  # all queued behind the blocked commit: the next commit carries them all
    held.release()
    results = await gathered
    assert await blocker == [1]
    # One commit carried them all: one bad payload fails every one of them, and says so.
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert "none of them was recorded" in "".join(getattr(results[0], "__notes__", []))
    assert "from 11 appends" in "".join(results[0].__notes__)
    assert await log.bounds("/a") == (1, 1)
    assert await log.bounds("/b") == Bounds(0, 0)
    assert await log.append_many([("/a", b"2"), ("/b", b"3")]) == [2, 1]  # the ids were handed out again
    # and the seqs: the tail the writer lists for reads holds the new events only
    assert [e.payload for e in await log.read("/a", 0, 10)] == [b"1", b"2"]
    assert [e.payload for e in await log.read("/b", 0, 10)] == [b"3"]
    await log.close()


async def test_closed_log_refuses_calls(make_log: MakeLog) -> None:
    log = make_log()
    await log.append("/a", [b"1"])
    await log.close()
    await log.close()  # idempotent
    for call in (log.append("/a", [b"2"]), log.read("/a", 0, 1), log.bounds("/a"), log.trim(0.0), log.epoch(),
                 log.bounds_with_epoch("/a")):
        with pytest.raises(EventLogClosed):
            await call


# ---- SQLite: restarts, durability, threads --------------------------------------------------


async def test_sqlite_ids_continue_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/a", [b"1", b"2"])
    await log.append("/b", [b"x"])
    await log.close()

    log = SqliteEventLog(path)
    assert await log.streams() == ["/a", "/b"]
    assert await log.bounds("/a") == (1, 2)
    assert await log.append("/a", [b"3"]) == [3]
    assert await log.append("/b", [b"y"]) == [2]
    assert [e.payload for e in await log.read("/a", 0, 10)] == [b"1", b"2", b"3"]
    await log.close()


async def test_sqlite_epoch_survives_reopen_and_a_new_file_has_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/a", [b"1"])
    epoch = await log.epoch()
    await log.close()

    log = SqliteEventLog(path)
    assert await log.bounds_with_epoch("/a") == (epoch, Bounds(1, 1))
    await log.close()

    for leftover in tmp_path.glob("events.db*"):  # the file deleted (or replaced), with its WAL
        leftover.unlink()
    log = SqliteEventLog(path)
    assert await log.append("/a", [b"1 again"]) == [1]  # ids start over: only the epoch tells them apart
    assert await log.epoch() != epoch
    await log.close()


async def test_sqlite_file_of_an_older_version_gets_an_epoch_that_then_stays(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/a", [b"1"])
    await log.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE meta")  # as the file was before the log had an epoch
    conn.close()

    log = SqliteEventLog(path)
    epoch = await log.epoch()
    assert await log.bounds("/a") == (1, 1)
    await log.close()
    log = SqliteEventLog(path)
    assert await log.epoch() == epoch
    await log.close()


async def test_sqlite_last_ids_come_from_the_saved_counters_or_the_newest_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    clock = FakeClock(1000.0)
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock)
    await log.append_many([("/old", b"1"), ("/old", b"2"), ("/kept", b"1")])
    with sqlite3.connect(path) as conn:  # appends do not write the counters: a trim does
        assert conn.execute("SELECT COUNT(*) FROM streams").fetchone() == (0,)
    conn.close()
    clock.now = 1005.0
    await log.append("/kept", [b"2"])
    await log.append("/new", [b"1"])
    clock.now = 1012.0
    assert await log.trim(clock.now) == 3  # /old entirely, /kept's first
    await log.append("/kept", [b"3"])  # after the trim: in no saved counter
    await log.close()

    log = SqliteEventLog(path, clock=clock)
    assert await log.streams() == ["/kept", "/new", "/old"]
    assert await log.bounds("/old") == (3, 2)  # everything trimmed, the last id kept
    assert await log.bounds("/kept") == (2, 3)  # the newest event is later than the saved counter
    assert await log.append_many([("/old", b"3"), ("/kept", b"4"), ("/new", b"2")]) == [3, 4, 2]
    await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # a later version's file: refused, not misread
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="newer"):
        SqliteEventLog(path)


async def test_sqlite_a_trim_after_a_restart_keeps_the_last_ids(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    clock = FakeClock(1000.0)
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock)
    await log.append("/a", [b"1", b"2"])
    await log.close()
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock)  # /a's counters known from its events only
    clock.now = 1020.0
    assert await log.trim(clock.now) == 2
    await log.close()
    log = SqliteEventLog(path, clock=clock)
    assert await log.bounds("/a") == (3, 2)
    assert await log.append("/a", [b"3"]) == [3]
    await log.close()


# Layout 2's tables as that version made them (layout 1 had the same ones).
LAYOUT_2 = """
CREATE TABLE events (stream TEXT NOT NULL, id INTEGER NOT NULL, ts REAL NOT NULL, payload BLOB NOT NULL,
                     PRIMARY KEY (stream, id));
CREATE INDEX events_by_time ON events (ts, stream, id);
CREATE TABLE streams (stream TEXT PRIMARY KEY, last_id INTEGER NOT NULL, last_ts REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('epoch', 'epoch-of-version-2');
"""


def old_layout_file(path: Path, version: int, events: list[tuple[str, int, float, bytes]],
                    counters: list[tuple[str, int, float]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(LAYOUT_2)
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", events)
        conn.executemany("INSERT INTO streams VALUES (?, ?, ?)", counters)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


async def test_sqlite_a_version_1_file_keeps_its_ids(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    # Version 1 saved every stream's counters with every commit.
    old_layout_file(path, 1, [("/a", 1, 1.0, b"1"), ("/a", 2, 1.0, b"2")], [("/a", 2, 1.0), ("/gone", 7, 1.0)])
    log = SqliteEventLog(path)
    assert await log.append_many([("/a", b"3"), ("/gone", b"8")]) == [3, 8]
    assert await log.streams() == ["/a", "/gone"]
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3]
    await log.close()


async def test_sqlite_a_version_2_file_is_upgraded_with_every_event_and_id(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    events = [("/b", 1, 5.0, b"b1"), ("/a", 1, 5.0, b"a1"), ("/a", 2, 6.0, b"a2"), ("/b", 2, 7.0, b"b2"),
              ("/c", 9, 8.0, b"c9")]  # /c's ids 1-8 were trimmed away
    old_layout_file(path, 2, events, [("/c", 8, 4.0), ("/gone", 3, 2.0)])
    log = SqliteEventLog(path, clock=FakeClock(10.0))
    assert await log.epoch() == "epoch-of-version-2"  # the same log: clients' replay ids stay valid
    assert await log.read_range(limit=10) == [Event(*event) for event in sorted(events, key=lambda e: (e[2], e[0]))]
    assert await log.read("/a", 1, 10) == [Event("/a", 2, 6.0, b"a2")]
    assert await log.bounds("/c") == (9, 9) and await log.bounds("/gone") == (4, 3)
    assert await log.streams() == ["/a", "/b", "/c", "/gone"]
    assert await log.append_many([("/a", b"a3"), ("/c", b"c10"), ("/gone", b"g4")]) == [3, 10, 4]
    await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"events", "stream_index", "streams", "meta"}  # nothing of the old layout left
    conn.close()
    log = SqliteEventLog(path)  # opened again: not upgraded twice
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3]
    await log.close()


async def test_sqlite_an_upgrade_that_fails_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old_layout_file(path, 2, [("/a", 1, 5.0, b"a1")], [])
    with sqlite3.connect(path) as conn:  # the old table is in the way of the upgrade's rename
        conn.execute("CREATE TABLE events_before_3 (x)")
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="events_before_3"):
        SqliteEventLog(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("SELECT stream, id, payload FROM events").fetchall() == [("/a", 1, b"a1")]
    conn.close()


# Layout 3's tables as that version made them: a row per event in the per-stream index.
LAYOUT_3 = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, id INTEGER NOT NULL, ts REAL NOT NULL,
                     payload BLOB NOT NULL);
CREATE INDEX events_by_time ON events (ts, stream, id);
CREATE TABLE events_by_stream (stream TEXT NOT NULL, id INTEGER NOT NULL, seq INTEGER NOT NULL,
                               PRIMARY KEY (stream, id)) WITHOUT ROWID;
CREATE TABLE streams (stream TEXT PRIMARY KEY, last_id INTEGER NOT NULL, last_ts REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('epoch', 'epoch-of-version-3'), ('indexed_through', '3');
PRAGMA user_version = 3;
"""


async def test_sqlite_a_version_3_file_is_indexed_again_with_every_event(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    events = [(1, "/a", 4, 5.0, b"a4"), (2, "/b", 1, 5.0, b"b1"), (3, "/a", 5, 6.0, b"a5"),  # indexed
              (4, "/a", 6, 7.0, b"a6"), (5, "/c", 1, 7.0, b"c1")]  # the tail; /a's 1-3 were trimmed
    with sqlite3.connect(path) as conn:
        conn.executescript(LAYOUT_3)
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", events)
        conn.executemany("INSERT INTO events_by_stream VALUES (?, ?, ?)", [("/a", 4, 1), ("/b", 1, 2), ("/a", 5, 3)])
        conn.execute("INSERT INTO streams VALUES ('/gone', 3, 2.0)")
    conn.close()
    log = SqliteEventLog(path, Retention(max_count=2), clock=FakeClock(10.0), index_batch=2)
    assert await log.epoch() == "epoch-of-version-3"
    assert await log.read("/a", 0, 10) == [Event(*event[1:]) for event in events if event[1] == "/a"]
    assert await log.bounds("/a") == (4, 6) and await log.bounds("/gone") == (4, 3)
    assert await log.streams() == ["/a", "/b", "/c", "/gone"]
    assert await log.read_range(streams=["/c", "/b"], limit=10) == [Event("/b", 1, 5.0, b"b1"),
                                                                     Event("/c", 1, 7.0, b"c1")]
    assert await log.append_many([("/a", b"a7"), ("/b", b"b2")]) == [7, 2]  # /a over its count: 4 and 5 go
    assert ids_of(await log.read("/a", 0, 10)) == [6, 7] and await log.bounds("/a") == (6, 7)
    await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"events", "stream_index", "streams", "meta"}
        assert indexed_events(conn) == conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    conn.close()


async def test_sqlite_reads_pass_over_what_a_trim_by_count_took_from_an_index_row(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db", Retention(max_count=4), index_batch=1)
    # One commit: indexed as one row of /a's ids 1-6, then 1 and 2 dropped from it (the row stays).
    await log.append_many([("/a", b"%d" % n) for n in range(1, 7)])
    assert ids_of(await log.read("/a", 0, 2)) == [3, 4]  # the first seqs fetched were gone: fetch on
    assert ids_of(await log.read("/a", 1, 10)) == [3, 4, 5, 6]
    assert ids_of(await log.read("/a", 4, 1)) == [5]
    assert await log.bounds("/a") == (3, 6)
    await log.append("/a", [b"7", b"8"])
    assert ids_of(await log.read("/a", 0, 3)) == [5, 6, 7]
    await log.close()


async def test_sqlite_a_backlog_is_indexed_in_rows_of_a_bounded_size(tmp_path: Path, monkeypatch) -> None:
    # A read sorts a whole row: an upgraded file must not get one row of a stream's whole history.
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(LAYOUT_3.replace("'indexed_through', '3'", "'indexed_through', '0'"))
        conn.executemany("INSERT INTO events VALUES (?, '/a', ?, 1.0, 'x')", [(n, n) for n in range(1, 8)])
    conn.close()
    monkeypatch.setattr(sqlite_layout, "BACKLOG_BATCH", 3)
    log = SqliteEventLog(path)
    assert ids_of(await log.read("/a", 0, 10)) == list(range(1, 8)) and await log.bounds("/a") == (1, 7)
    assert ids_of(await log.read("/a", 4, 2)) == [5, 6]
    await log.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT first_id, last_id FROM stream_index ORDER BY last_id").fetchall()
        assert rows == [(1, 3), (4, 6), (7, 7)] and indexed_events(conn) == 7
    conn.close()


async def test_sqlite_an_index_behind_its_events_is_caught_up_without_listing_any_twice(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, index_batch=3)
    await log.append_many([("/a", b"a1"), ("/b", b"b1"), ("/a", b"a2")])  # indexed
    await log.append_many([("/a", b"a3")])  # the tail
    await log.close()
    with sqlite3.connect(path) as conn:  # as if the index's progress had not been saved
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'indexed_through'")
    conn.close()
    log = SqliteEventLog(path)
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3] and await log.bounds("/a") == (1, 3)
    await log.close()
    with sqlite3.connect(path) as conn:
        assert indexed_events(conn) == 4
    conn.close()


async def test_sqlite_reads_see_indexed_events_and_the_tail_alike(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    clock = FakeClock(1000.0)
    log = SqliteEventLog(path, clock=clock, index_batch=4)
    await log.append_many([("/a", b"a1"), ("/b", b"b1"), ("/a", b"a2")])  # the tail: 3 events
    clock.now += 1
    await log.append_many([("/a", b"a3"), ("/c", b"c1")])  # 5: indexed, tail empty
    clock.now += 1
    await log.append_many([("/a", b"a4"), ("/d", b"d1")])  # the tail again
    with sqlite3.connect(path) as conn:  # where each event is
        assert indexed_events(conn) == 5
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (7,)
    conn.close()
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3, 4]  # across both, in order
    assert ids_of(await log.read("/a", 1, 2)) == [2, 3]  # the limit within the indexed part
    assert ids_of(await log.read("/a", 2, 2)) == [3, 4]  # and across
    assert ids_of(await log.read("/a", 3, 2)) == [4]  # within the tail
    assert await log.bounds("/a") == (1, 4)
    assert await log.bounds("/d") == (1, 1)  # only in the tail
    assert await log.bounds("/c") == (1, 1)  # only indexed
    assert await log.streams() == ["/a", "/b", "/c", "/d"]
    found = await log.read_range(streams=["/a", "/d"], limit=10)
    assert [(e.stream, e.id) for e in found] == [("/a", 1), ("/a", 2), ("/a", 3), ("/a", 4), ("/d", 1)]
    await log.close()


async def test_sqlite_a_second_opener_indexing_the_tail_leaves_the_writer_working(tmp_path: Path, caplog) -> None:
    # `cometd-broker events dump` opens the live file too, and indexes the broker's tail as it does.
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, index_batch=4)
    await log.append_many([("/a", b"a1"), ("/b", b"b1"), ("/a", b"a2")])
    tool = SqliteEventLog(path)
    assert ids_of(await tool.read("/a", 0, 10)) == [1, 2]
    await tool.close()
    with caplog.at_level(logging.WARNING, logger="cometd_broker.eventlog"):
        await log.append_many([("/a", b"a3"), ("/b", b"b2")])  # the writer's batch is due: indexed again
        await log.append_many([("/a", b"a4")])
    assert "could not index" not in caplog.text
    with sqlite3.connect(path) as conn:
        assert indexed_events(conn) == 5
    conn.close()
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3, 4]
    await log.close()


async def test_sqlite_reads_find_the_tail_from_the_writers_list_without_scanning_it(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    # In the writer's process, reads and bounds take a stream's tail events from the writer's list: a
    # scan of the tail (what a reader in another process does) would cost a whole batch per read.
    from cometd_broker.eventlog import sqlite_layout
    monkeypatch.setattr(sqlite_layout, "_TAIL_EVENTS", "SELECT no_such_column FROM events")
    monkeypatch.setattr(sqlite_layout, "_BOUNDS", "SELECT no_such_column FROM events")
    log = SqliteEventLog(tmp_path / "events.db", index_batch=5)
    await log.append_many([("/a", b"a1"), ("/b", b"b1"), ("/a", b"a2"), ("/a", b"a3")])
    assert ids_of(await log.read("/a", 1, 10)) == [2, 3] and await log.bounds("/a") == (1, 3)
    await log.append_many([("/a", b"a4"), ("/b", b"b2")])  # indexed: a4 and b2 are the index's now
    await wait_for(lambda: log.stats()["unindexed"] == 0)
    await log.append_many([("/b", b"b3"), ("/c", b"c1")])  # a new tail
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3, 4] and await log.bounds("/a") == (1, 4)
    assert ids_of(await log.read("/b", 0, 2)) == [1, 2] and ids_of(await log.read("/b", 2, 10)) == [3]
    assert await log.bounds("/b") == (1, 3) and await log.bounds("/c") == (1, 1)
    assert [e.payload for e in await log.read("/c", 0, 10)] == [b"c1"] and await log.read("/d", 0, 10) == []
    await log.close()
    # A page of a busy stream's tail copies that page of the list, not the list.
    busy = SqliteEventLog(tmp_path / "busy.db")
    await busy.append_many([("/hot", b"%d" % n) for n in range(1, 4)])
    await busy.append_many([("/hot", b"%d" % n) for n in range(4, 41)])
    assert ids_of(await busy.read("/hot", 10, 5)) == [11, 12, 13, 14, 15] and await busy.bounds("/hot") == (1, 40)
    _, _, first_id, count, part = busy._writer.known_tail("/hot", 10**9, 10, 5)
    assert (first_id, count, len(part)) == (1, 40, 5)
    await busy.close()


async def test_sqlite_a_tail_indexed_by_another_opener_is_read_once(tmp_path: Path) -> None:
    # The writer's list is of a tail that another opener has indexed since: reads must not take those
    # events from the index's rows and from the list both.
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append_many([("/a", b"a1"), ("/a", b"a2"), ("/b", b"b1")])
    tool = SqliteEventLog(path)  # indexes the tail as it opens
    await tool.close()
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2] and await log.bounds("/a") == (1, 2)
    await log.append_many([("/a", b"a3")])
    assert ids_of(await log.read("/a", 0, 3)) == [1, 2, 3] and ids_of(await log.read("/a", 1, 10)) == [2, 3]
    assert await log.bounds("/b") == (1, 1)
    await log.close()


async def test_sqlite_a_second_opener_reads_what_the_broker_appends_after_it_opened(tmp_path: Path) -> None:
    # `cometd-broker events ...` beside a running broker: its own writer appends nothing, so its list of
    # the tail is empty; the broker's new events must be found by scanning, not missed.
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append_many([("/a", b"a1")])
    tool = SqliteEventLog(path)
    await log.append_many([("/a", b"a2"), ("/b", b"b1")])
    assert ids_of(await tool.read("/a", 0, 10)) == [1, 2] and await tool.bounds("/b") == (1, 1)
    await tool.close()
    await log.close()


async def test_sqlite_an_index_batch_that_fails_loses_nothing_and_is_tried_again(tmp_path: Path, caplog) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, index_batch=4)
    with sqlite3.connect(path) as other:  # the per-stream index refuses every row for now
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON stream_index "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    other.close()
    with caplog.at_level(logging.WARNING, logger="cometd_broker.eventlog"):
        assert await log.append_many([("/a", b"1"), ("/b", b"1"), ("/a", b"2")]) == [1, 1, 2]
        assert log.stats()["unindexed"] == 3
        assert await log.append_many([("/a", b"3"), ("/b", b"2")]) == [3, 2]  # a batch is due, and fails
        assert await log.append("/a", [b"4"]) == [4]  # and again, at the next commit
        # A batch runs on the writer's thread after its commit was handed back: wait for the second.
        await wait_for(lambda: caplog.text.count("could not index its last") == 2)
    assert "refused" in caplog.text
    stats = log.stats()
    assert stats["unindexed"] == 6 and stats["up"] is True  # appends go on: the tail is read by scanning
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3, 4] and await log.bounds("/b") == (1, 2)
    with sqlite3.connect(path) as other:
        other.execute("DROP TRIGGER refuse")
    other.close()
    await log.append("/b", [b"3"])  # the next batch indexes the whole tail
    await wait_for(lambda: log.stats()["unindexed"] == 0)
    with sqlite3.connect(path) as conn:
        assert indexed_events(conn) == 7
    conn.close()
    assert ids_of(await log.read("/a", 0, 10)) == [1, 2, 3, 4] and ids_of(await log.read("/b", 0, 10)) == [1, 2, 3]
    await log.close()


async def test_sqlite_new_events_after_everything_was_trimmed_are_still_found(tmp_path: Path) -> None:
    # The table is empty, but its next events must not be taken for indexed ones (see sqlite_layout.py).
    path = tmp_path / "events.db"
    clock = FakeClock(0.0)
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock, index_batch=2)
    await log.append("/a", [b"1", b"2", b"3"])
    assert await log.trim(now=100.0) == 3
    await log.close()
    clock.now = 100.0
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock, index_batch=2)
    assert await log.append("/b", [b"1"]) == [1]
    assert ids_of(await log.read("/b", 0, 10)) == [1]
    assert await log.append("/b", [b"2"]) == [2]  # and once indexed
    assert ids_of(await log.read("/b", 0, 10)) == [1, 2]
    await log.close()


async def test_sqlite_ids_not_reused_after_trimming_everything_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    clock = FakeClock(0.0)
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock)
    await log.append("/a", [b"1", b"2", b"3"])
    assert await log.trim(now=100.0) == 3
    await log.close()

    clock.now = 100.0
    log = SqliteEventLog(path, Retention(max_age=10), clock=clock)
    assert await log.bounds("/a") == (4, 3)
    assert await log.append("/a", [b"4"]) == [4]
    await log.close()


async def test_sqlite_reopened_with_smaller_max_count_trims_the_excess(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/a", [str(i).encode() for i in range(10)])
    await log.close()

    log = SqliteEventLog(path, Retention(max_count=4))
    assert await log.trim(now=0.0) == 6
    assert await log.bounds("/a") == (7, 10)
    await log.close()


def test_sqlite_multi_row_inserts_take_exactly_their_rows_in_a_bounded_number_of_texts() -> None:
    """Counts rounded up to a multiple of ROW_STEP (rows of NULLs the statement leaves out), so that every
    size from 1 to MAX_ROWS stays in the statement cache; upserts too."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL)")
    texts: set[str] = set()

    class Counting:
        def execute(self, sql: str, params: list[object]) -> sqlite3.Cursor:
            texts.add(sql)
            return conn.execute(sql, params)

    upsert = "INSERT INTO t (a, b) {} ON CONFLICT (a) DO UPDATE SET b = excluded.b"
    first = 0
    for count in [*range(1, MAX_ROWS + 1), ROW_STEP + 1, 2 * MAX_ROWS + 7]:
        params = [value for a in range(first, first + count) for value in (a, f"v{a}")]
        insert_rows(Counting(), "INSERT INTO t (a, b) {}", "(?,?)", params, 2)  # type: ignore[arg-type]
        assert conn.execute("SELECT COUNT(*), MAX(a) FROM t WHERE a >= ?", (first,)).fetchone() == (
            count, first + count - 1), count
        first += count
    assert conn.execute("SELECT COUNT(*) FROM t WHERE b = 'v' || a").fetchone()[0] == first  # each row its own
    assert len(texts) == ROW_STEP + -(-MAX_ROWS // ROW_STEP) - 1 <= CACHED_STATEMENTS // 2
    insert_rows(Counting(), upsert, "(?,?)", [v for a in range(5, 40) for v in (a, "new")], 2)  # type: ignore[arg-type]
    assert conn.execute("SELECT COUNT(*) FROM t WHERE b = 'new'").fetchone()[0] == 35
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == first


async def test_sqlite_failed_commit_hands_its_ids_out_again(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    await log.append("/a", [b"1"])
    reject_bad_payloads(path)  # the commit carrying b"bad" fails
    with pytest.raises(sqlite3.IntegrityError):
        await log.append("/a", [b"bad"])
    assert await log.append("/a", [b"2"]) == [2]  # id 2 was never committed, so it is not lost
    await log.append("/new", [b"ok"])
    assert await log.bounds("/a") == (1, 2)
    await log.close()


async def test_sqlite_close_commits_queued_appends_and_stops_every_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, readers=3)
    await asyncio.gather(*(log.read("/a", 0, 1) for _ in range(6)))  # start the reader threads
    assert any(t.name.startswith("eventlog-sqlite-") for t in threading.enumerate())

    appends = [asyncio.create_task(log.append("/a", [b"%d" % i])) for i in range(200)]
    await asyncio.sleep(0)  # let the appends queue
    await log.close()
    results = await asyncio.gather(*appends, return_exceptions=True)
    committed = sorted(r[0] for r in results if isinstance(r, list))
    assert all(isinstance(r, list | EventLogClosed) for r in results)
    assert committed == list(range(1, len(committed) + 1)) and committed

    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []

    log = SqliteEventLog(path)
    assert ids_of(await log.read("/a", 0, 1000)) == committed  # every append that returned is there
    await log.close()


_KILLED_WRITER = r"""
import asyncio, os, signal, sys
from cometd_broker.eventlog import SqliteEventLog

async def main(path, target, index_batch):
    log = SqliteEventLog(path, index_batch=index_batch)
    printed = 0

    async def writer(k):
        nonlocal printed
        stream = f"/s{k % 3}"
        while True:
            ids = await log.append(stream, [b"x" * 200, b"y"])
            sys.stdout.write("".join(f"{stream} {i}\n" for i in ids))
            sys.stdout.flush()
            printed += len(ids)
            if printed >= target:
                os.kill(os.getpid(), signal.SIGKILL)  # other appends are still in flight

    await asyncio.gather(*(writer(k) for k in range(12)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


@pytest.mark.parametrize("index_batch", [INDEX_BATCH, 50], ids=["unindexed-tail", "killed-among-index-batches"])
async def test_sqlite_every_returned_id_survives_kill_9(tmp_path: Path, index_batch: int) -> None:
    path = tmp_path / "events.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_WRITER, str(path), "3000", str(index_batch),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    printed: dict[str, set[int]] = {}
    for line in stdout.decode().splitlines():
        stream, id_ = line.split()
        printed.setdefault(stream, set()).add(int(id_))
    assert sum(map(len, printed.values())) >= 3000

    log = SqliteEventLog(path)
    for stream, ids in printed.items():
        stored = ids_of(await log.read(stream, 0, 100_000))
        assert ids <= set(stored), f"{stream}: lost {sorted(ids - set(stored))[:10]}"
        assert stored == list(range(1, len(stored) + 1))  # contiguous: no torn batch
        latest = (await log.bounds(stream)).latest
        assert await log.append(stream, [b"after restart"]) == [latest + 1]
    await log.close()
    with sqlite3.connect(path) as conn:  # the killed run's tail was indexed at the open, every event once
        assert indexed_events(conn) == conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] - len(printed)
    conn.close()


# ---- factory and retention task ---------------------------------------------------------------


async def test_open_event_log_picks_the_store(tmp_path: Path) -> None:
    stores = [
        open_event_log("memory:"),
        open_event_log(f"sqlite://{tmp_path}/a.db", Retention(max_count=5), batch_delay=0),  # sqlite:///tmp/...
        open_event_log(tmp_path / "b.db"),
    ]
    try:
        assert isinstance(stores[0], MemoryEventLog)
        assert isinstance(stores[1], SqliteEventLog) and stores[1].path == f"{tmp_path}/a.db"
        assert stores[1].retention == Retention(max_count=5)
        assert isinstance(stores[2], SqliteEventLog) and stores[2].path == str(tmp_path / "b.db")
        assert all(isinstance(store, EventLog) for store in stores)
    finally:
        for store in stores:
            await store.close()
    with pytest.raises(ValueError, match="unsupported"):
        open_event_log("postgres://localhost/events")
    with pytest.raises(ValueError):
        open_event_log(":memory:")


def test_retention_validates() -> None:
    for bad in ({"max_age": 0}, {"max_age": -1.0}, {"max_count": 0}, {"max_count": True}):
        with pytest.raises(ValueError):
            Retention(**bad)
    assert Retention(max_age=0.5, max_count=1).max_count == 1


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_retention_task_trims_at_start_and_periodically() -> None:
    clock = FakeClock(0.0)
    log = MemoryEventLog(Retention(max_age=10), clock=clock)
    await log.append("/a", [b"old"])
    clock.now = 100.0
    task = RetentionTask(log, period=0.01, clock=clock)
    task.start()
    with pytest.raises(RuntimeError):
        task.start()
    await wait_for(lambda: task.runs >= 1)
    assert task.dropped == 1 and await log.bounds("/a") == (2, 1)
    await log.append("/a", [b"new"])
    clock.now = 200.0
    await wait_for(lambda: task.dropped == 2)
    await task.stop()
    await task.stop()
    assert not task.running
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "eventlog-retention"]
    await log.close()


async def test_retention_task_survives_a_failing_trim_and_ends_when_the_log_closes(caplog) -> None:
    calls: list[float] = []

    class Flaky(MemoryEventLog):
        async def trim(self, now: float) -> int:
            calls.append(now)
            if len(calls) == 1:
                raise OSError("disk on fire")
            return await super().trim(now)

    log = Flaky(Retention(max_age=1))
    task = RetentionTask(log, period=0.01)
    with caplog.at_level(logging.ERROR, logger="cometd_broker.eventlog"):
        task.start()
        await wait_for(lambda: task.runs >= 2)
    assert "retention trim failed" in caplog.text
    await log.close()
    await wait_for(lambda: not task.running)  # EventLogClosed ends it quietly
    await task.stop()


async def test_retention_task_warns_in_one_line_while_the_log_is_unavailable(caplog) -> None:
    class Unreachable(MemoryEventLog):
        async def trim(self, now: float) -> int:
            raise EventLogUnavailable("redis at redis://127.0.0.1:1/0 is unavailable: connection refused")

    log = Unreachable(Retention(max_age=1))
    task = RetentionTask(log, period=0.01)
    with caplog.at_level(logging.WARNING, logger="cometd_broker.eventlog"):
        task.start()
        await wait_for(lambda: caplog.text.count("retention trim skipped") >= 2)  # and it keeps trying
    await task.stop()
    [record, *_] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == ("event log retention trim skipped (redis at redis://127.0.0.1:1/0 is "
                                   "unavailable: connection refused); retrying in 0 s")
    await log.close()


# ---- model-based: every store against a list of dicts ------------------------------------------

STREAM_NAMES = st.sampled_from(["/a", "/b", "/c"])
MODEL_RETENTION = Retention(max_age=30.0, max_count=4)


class EventLogMachine(RuleBasedStateMachine):
    """Drives a store and a plain model with the same appends, clock moves, trims and restarts."""

    kind = "memory"
    one_clock = False  # the store's timestamps never go back across all its streams (Redis's clock key)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = FakeClock(1000.0)
        self.log = self.open()
        self.latest: dict[str, int] = {}
        self.last_ts: dict[str, float] = {}
        self.kept: dict[str, list[Event]] = {}

    def open(self) -> EventLog:
        if self.kind == "memory":
            return MemoryEventLog(MODEL_RETENTION, clock=self.clock)
        return SqliteEventLog(Path(self.tmp.name) / "e.db", MODEL_RETENTION, clock=self.clock, batch_delay=0)

    def run(self, awaitable: Awaitable):
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        self.run(self.log.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(stream=STREAM_NAMES, payloads=st.lists(st.binary(max_size=8), max_size=6))
    def append(self, stream: str, payloads: list[bytes]) -> None:
        ids = self.run(self.log.append(stream, payloads))
        if not payloads:
            assert ids == []
            return
        first = self.latest.get(stream, 0) + 1
        assert ids == list(range(first, first + len(payloads)))
        # Timestamps never go back within a stream; in a log with one clock, not across streams either.
        floor = max(self.last_ts.values(), default=0.0) if self.one_clock else self.last_ts.get(stream, 0.0)
        ts = max(self.clock.now, floor)
        self.latest[stream], self.last_ts[stream] = ids[-1], ts
        kept = self.kept.setdefault(stream, [])
        kept.extend(Event(stream, id_, ts, payload) for id_, payload in zip(ids, payloads, strict=True))
        del kept[: -MODEL_RETENTION.max_count]

    @rule(seconds=st.floats(min_value=-5.0, max_value=40.0, allow_nan=False))
    def move_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def trim(self) -> None:
        cutoff = self.clock.now - MODEL_RETENTION.max_age
        expected = 0
        for stream, events in self.kept.items():
            keep = [e for e in events if e.timestamp >= cutoff]
            expected += len(events) - len(keep)
            self.kept[stream] = keep
        assert self.run(self.log.trim(self.clock.now)) == expected

    @rule(stream=STREAM_NAMES, after=st.integers(-1, 30), limit=st.integers(0, 5))
    def read(self, stream: str, after: int, limit: int) -> None:
        expected = [e for e in self.kept.get(stream, []) if e.id > after][:limit]
        assert self.run(self.log.read(stream, after, limit)) == expected

    @rule(
        streams=st.none() | st.lists(STREAM_NAMES, max_size=3),
        since=st.none() | st.floats(900, 1400),
        limit=st.integers(0, 8),
    )
    def read_range(self, streams: list[str] | None, since: float | None, limit: int) -> None:
        everything = sorted((e for events in self.kept.values() for e in events), key=lambda e: e.sort_key)
        wanted = [e for e in everything if streams is None or e.stream in streams]
        expected = [e for e in wanted if since is None or e.timestamp >= since][:limit]
        assert self.run(self.log.read_range(streams=streams, since=since, limit=limit)) == expected

    @precondition(lambda self: self.kind == "sqlite")
    @rule()
    def restart(self) -> None:
        self.run(self.log.close())
        self.log = self.open()

    @invariant()
    def bounds_and_streams_match(self) -> None:
        assert self.run(self.log.streams()) == sorted(self.latest)
        for stream in ("/a", "/b", "/c"):
            latest = self.latest.get(stream, 0)
            kept = self.kept.get(stream, [])
            expected = (kept[0].id if kept else latest + 1, latest) if latest else (0, 0)
            assert self.run(self.log.bounds(stream)) == expected
            if latest:
                assert [e.id for e in kept] == list(range(expected[0], latest + 1))  # always contiguous


MODEL_SETTINGS = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class SqliteEventLogMachine(EventLogMachine):
    kind = "sqlite"


class SqliteSmallIndexBatchMachine(EventLogMachine):
    """Indexed every few events: reads, bounds and both kinds of trims meet the tail and the index."""

    kind = "sqlite"

    def open(self) -> EventLog:
        return SqliteEventLog(Path(self.tmp.name) / "e.db", MODEL_RETENTION, clock=self.clock, batch_delay=0,
                              index_batch=3)

    @invariant()
    def index_rows_go_with_their_events(self) -> None:
        # A row whose events were all trimmed would be kept for ever (and read past by every bound).
        with sqlite3.connect(Path(self.tmp.name) / "e.db") as conn:
            indexed_events(conn)
            assert conn.execute("SELECT COUNT(*) FROM stream_index WHERE NOT EXISTS "
                                "(SELECT 1 FROM events WHERE seq = stream_index.last_seq)").fetchone() == (0,)
        conn.close()


TestMemoryEventLogModel = EventLogMachine.TestCase
TestMemoryEventLogModel.settings = MODEL_SETTINGS
TestSqliteEventLogModel = SqliteEventLogMachine.TestCase
TestSqliteEventLogModel.settings = MODEL_SETTINGS
TestSqliteSmallIndexBatchModel = SqliteSmallIndexBatchMachine.TestCase
TestSqliteSmallIndexBatchModel.settings = MODEL_SETTINGS


# ---- WAL checkpoints (sqlite_checkpointer.py) -----------------------------------------------------


def wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_sqlite_commits_never_checkpoint_the_checkpointer_does(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    assert log._writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # not inside a commit
    for batch in range(5):
        await log.append_many([(f"/s{n}", b"x" * 200) for n in range(batch * 100, batch * 100 + 100)])
    for _ in range(200):
        if log.stats()["checkpoints"]:
            break
        await asyncio.sleep(0.01)
    stats = log.stats()
    assert stats["checkpoints"] >= 1 and stats["checkpoint_failures"] == 0
    await log.close()
    reopened = SqliteEventLog(path)
    assert [len(await reopened.read(f"/s{n}", 0, 10)) for n in (0, 250, 499)] == [1, 1, 1]
    await reopened.close()


class CrossedEvent(threading.Event):
    """An Event whose timed wait says False though it is set: what Condition.wait returns when its
    timeout and a set() cross (seen as a checkpointer that never ended on stop)."""

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        super().wait(timeout)
        return False


async def test_sqlite_checkpointer_stops_even_when_its_timed_wait_misses_the_stop(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    checkpointer = log._checkpointer
    checkpointer._stopping = CrossedEvent()
    await log.append_many([(f"/s{n}", b"x") for n in range(10)])  # nudges it: it waits out its period
    await asyncio.wait_for(log.close(), 5)
    assert not checkpointer._thread.is_alive()


async def test_sqlite_a_writer_that_never_pauses_still_gets_its_wal_started_over(tmp_path: Path) -> None:
    # Under a steady load a PASSIVE checkpoint never finds the WAL wholly copied, so SQLite would never
    # reuse it from the start; past force_pages the checkpointer holds the writer back to finish it.
    async def load(path: Path, force_pages: int | None) -> tuple[int, int]:
        page_size = 4096  # SQLite's default
        log = SqliteEventLog(path, checkpoint_period=0.005, wal_limit=(force_pages or 1) * page_size)
        if force_pages is None:
            await log._checkpointer.stop()  # nobody checkpoints: the WAL holds every page written
        for batch in range(200):  # back to back, no pause for a checkpoint to catch up in
            await log.append_many([(f"/s{(batch * 37 + n) % 500}", b"x" * 300) for n in range(100)])
        forced = log._checkpointer.forced
        size = wal_bytes(path)
        await log.close()
        return forced, size

    forced, bounded = await load(tmp_path / "bounded.db", 200)
    _, unbounded = await load(tmp_path / "unbounded.db", None)
    assert forced >= 1
    assert bounded < unbounded / 2, (bounded, unbounded)


async def test_the_brokers_wal_options_reach_a_sqlite_log_and_mean_nothing_to_memory(tmp_path: Path) -> None:
    from cometd_broker.broker import Broker
    from cometd_broker.config import BrokerConfig

    broker = Broker(BrokerConfig(event_log=str(tmp_path / "events.db"), wal_checkpoint_period=0.25, wal_limit_mb=8))
    checkpointer = broker.event_log._checkpointer
    assert (checkpointer._period, checkpointer._force_pages) == (0.25, 8 * 1024 * 1024 // 4096)
    await broker.event_log.close()
    in_memory = Broker(BrokerConfig(event_log="memory:", wal_checkpoint_period=0.25))
    assert isinstance(in_memory.event_log, MemoryEventLog)


async def test_a_commit_reaches_its_subscriber_when_the_next_request_comes_in(tmp_path: Path) -> None:
    # On a saturated loop a turn is a thousand long-poll reconnects: a publish committed early in it
    # must not wait for the turn's end (and the next turn's answers) to be delivered.
    from cometd_broker.broker import Broker, RequestContext
    from cometd_broker.config import BrokerConfig
    from cometd_broker.exchange import Exchange

    broker = Broker(BrokerConfig(event_log=str(tmp_path / "events.db"), allow_anonymous=True))
    exchange = Exchange(broker)
    ctx = RequestContext("long-polling")
    hello = {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}
    [shook] = (await broker.handle([hello], ctx)).replies
    client_id = shook["clientId"]
    await broker.handle([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/news"}], ctx)
    connect = {"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}
    first = RecordingResponder()
    exchange.submit([dict(connect, advice={"timeout": 0})], ctx, first)
    await asyncio.sleep(0.01)
    held = RecordingResponder()
    exchange.submit([connect], ctx, held)  # parked: the session waits for an event
    session = broker.session(client_id)
    log = broker.event_log
    before = log.commits
    publish = asyncio.ensure_future(broker.publish("/news", {"n": 1}))
    await asyncio.sleep(0)  # its append is submitted
    hold_loop_until(lambda: log.commits > before)  # the loop is held in this turn
    assert log.commits == before + 1
    assert len(session.queue) == 0  # committed, not yet known on the loop
    exchange.submit([hello], ctx, RecordingResponder())  # another client's request, in the same turn
    assert len(session.queue) == 1  # delivered before that request was handled
    await publish
    for _ in range(100):
        if held.answers:
            break
        await asyncio.sleep(0.01)
    assert [m.get("data") for m in orjson.loads(held.answers[0].body()) if m["channel"] == "/news"] == [{"n": 1}]
    await broker.close()
