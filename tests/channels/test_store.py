"""The SQLite document store behind contact-center persistence: a writer thread, group commit, awaited."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time

import pytest
from bayeux_helpers import hold_loop_until

from channels.app import open_state_store
from channels.memory_store import MemoryStateStore
from channels.store import StateStore, StoreUnavailable


async def test_documents_survive_reopening(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    await store.apply([("interaction", "0000A", {"state": "Chatting", "log": [1, 2, 3]})])
    await store.apply([("interaction", "0000B", {"state": "Invited"}), ("workbin", "alice-drafts", {"items": []})])
    await store.apply([("interaction", "0000B", None)])
    await store.close()

    again = StateStore(path)
    assert again.load("interaction") == {"0000A": {"state": "Chatting", "log": [1, 2, 3]}}
    assert again.load("workbin") == {"alice-drafts": {"items": []}}
    assert again.load("conference") == {}
    await again.close()


async def test_a_failed_batch_changes_nothing(tmp_path):
    store = StateStore(tmp_path / "state.db")
    await store.apply([("interaction", "keep", {"n": 1})])
    with pytest.raises(TypeError):
        await store.apply([("interaction", "keep", {"n": 2}), ("interaction", "bad", {"x": object()})])
    assert store.load("interaction") == {"keep": {"n": 1}}
    await store.close()


async def test_a_batch_sqlite_refuses_changes_nothing(tmp_path):
    # A row SQLite refuses fails the whole batch, writes and deletes alike, and the store stays usable.
    store = StateStore(tmp_path / "state.db")
    store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON documents WHEN NEW.key = 'bad' "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    await store.apply([("interaction", "keep", {"n": 1}), ("interaction", "gone", {"n": 1})])
    for batch in ([("interaction", "keep", {"n": 2}), ("interaction", "bad", {"n": 2})],
                  [("interaction", "gone", None), ("interaction", "keep", {"n": 3}), ("interaction", "bad", {})]):
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            await store.apply(batch)
        assert store.load("interaction") == {"keep": {"n": 1}, "gone": {"n": 1}}
    await store.apply([("interaction", "gone", None), ("interaction", "keep", {"n": 4})])  # still usable
    assert store.load("interaction") == {"keep": {"n": 4}}
    await store.close()


def test_writes_are_durable_when_the_process_is_killed(tmp_path):
    """A write awaited before SIGKILL is there after restart (WAL, synchronous=NORMAL)."""
    path = tmp_path / "state.db"
    script = (
        "import asyncio, os, signal\n"
        "from channels.store import StateStore\n"
        "async def main():\n"
        f"    store = StateStore({str(path)!r})\n"
        "    for i in range(50):\n"
        "        await store.apply([('interaction', str(i), {'i': i})])\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.returncode == -9, result.stderr
    store = StateStore(path)
    assert store.load("interaction") == {str(i): {"i": i} for i in range(50)}
    store.close_now()


async def test_memory_store_keeps_nothing():
    store = StateStore(":memory:")
    await store.apply([("k", "a", {})])
    assert store.load("k") == {"a": {}}
    await store.close()


async def test_writes_queued_together_share_a_commit_and_keep_their_order(tmp_path):
    store = StateStore(tmp_path / "state.db")
    await asyncio.gather(*(store.apply([("counter", "n", {"n": i}), ("interaction", str(i), {"i": i})])
                           for i in range(200)))
    assert store.writes == 200 and store.commits < 200  # grouped: the thread took what queued meanwhile
    assert store.load("counter") == {"n": {"n": 199}}  # the last write queued is the last applied
    assert len(store.load("interaction")) == 200
    await store.close()


async def test_a_write_waiting_on_the_disk_does_not_stall_the_loop(tmp_path):
    """Another connection holds the database's write lock for 0.3 s: the write waits for it on the writer
    thread while the loop goes on running callbacks every few milliseconds."""
    path = tmp_path / "state.db"
    store = StateStore(path)
    await store.apply([("k", "first", {})])  # the thread is up
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    blocker.execute("INSERT INTO documents (kind, key, body) VALUES ('k', 'other', '{}')")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, blocker.execute, "COMMIT")
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    await store.apply([("k", "second", {})])
    waited = time.monotonic() - started
    ticking.cancel()
    blocker.close()
    assert waited >= 0.25  # it did wait for the lock ...
    assert len(gaps) > 20 and max(gaps) < 0.1  # ... but not on the loop
    assert set(store.load("k")) == {"first", "other", "second"}
    await store.close()


async def test_close_commits_what_is_queued_and_refuses_later_writes(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    writes = [asyncio.create_task(store.apply([("k", str(i), {"i": i})])) for i in range(20)]
    await asyncio.sleep(0)  # every write queued
    await store.close()
    await asyncio.gather(*writes)
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.apply([("k", "late", {})])
    await store.close()  # twice is fine
    again = StateStore(path)
    assert len(again.load("k")) == 20
    again.close_now()


async def test_a_cancelled_caller_does_not_cancel_its_write(tmp_path):
    store = StateStore(tmp_path / "state.db")
    write = asyncio.create_task(store.apply([("k", "a", {"n": 1})]))
    await asyncio.sleep(0)
    write.cancel()
    await store.close()
    assert store.commits == 1


async def test_the_memory_option_keeps_documents_in_a_dict_with_the_same_contract(tmp_path):
    store = open_state_store(":memory:")
    assert isinstance(store, MemoryStateStore)  # no writer thread for data that dies with the process
    await store.apply([("k", "a", {"n": 1}), ("k", "b", {"n": 2}), ("other", "a", {})])
    await store.apply([("k", "a", None), ("k", "b", {"n": 3})])
    assert store.load("k") == {"b": {"n": 3}} and store.load("other") == {"a": {}}
    with pytest.raises(TypeError):  # not JSON: refused whole, as StateStore refuses it
        await store.apply([("k", "c", {"n": 4}), ("k", "d", {"bad": object()})])
    assert store.load("k") == {"b": {"n": 3}}
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.apply([("k", "e", {})])
    on_disk = open_state_store(str(tmp_path / "state.db"))
    assert isinstance(on_disk, StateStore)
    on_disk.close_now()


async def test_a_stored_write_is_settled_by_the_first_reap_within_the_loops_turn(tmp_path):
    # On a busy loop the thread's scheduled callback waits for the turn's other callbacks; the broker
    # reaps as requests come in, so the write's notifications need not wait for the turn to end.
    store = StateStore(tmp_path / "state.db")
    await store.apply([("interaction", "warm", {"n": 0})])
    before = store.commits
    written = await store.submit([("interaction", "0000A", {"n": 1})])
    hold_loop_until(lambda: store.commits > before)  # the loop is held in this turn
    assert store.commits == before + 1 and not written.done()
    store.reap()
    assert written.done() and written.exception() is None
    MemoryStateStore().reap()  # nothing to settle: writes are settled when submitted
    await store.close()
