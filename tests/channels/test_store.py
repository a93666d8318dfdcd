"""The SQLite document store behind contact-center persistence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from channels.store import StateStore


def test_documents_survive_reopening(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.put("interaction", "0000A", {"state": "Chatting", "log": [1, 2, 3]})
    store.put("interaction", "0000B", {"state": "Invited"})
    store.put("workbin", "alice-drafts", {"items": []})
    store.delete("interaction", "0000B")
    store.close()

    again = StateStore(path)
    assert again.load("interaction") == {"0000A": {"state": "Chatting", "log": [1, 2, 3]}}
    assert again.load("workbin") == {"alice-drafts": {"items": []}}
    assert again.load("conference") == {}
    again.close()


def test_a_failed_batch_changes_nothing(tmp_path):
    store = StateStore(tmp_path / "state.db")
    store.put("interaction", "keep", {"n": 1})
    with pytest.raises(TypeError):
        store.apply([("interaction", "keep", {"n": 2}), ("interaction", "bad", {"x": object()})])
    assert store.load("interaction") == {"keep": {"n": 1}}
    store.close()


def test_writes_are_durable_when_the_process_is_killed(tmp_path):
    """A commit returned before SIGKILL is there after restart (WAL, synchronous=NORMAL)."""
    path = tmp_path / "state.db"
    script = (
        "import os, signal, sys\n"
        "from channels.store import StateStore\n"
        f"store = StateStore({str(path)!r})\n"
        "for i in range(50):\n"
        "    store.put('interaction', str(i), {'i': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.returncode == -9
    store = StateStore(path)
    assert store.load("interaction") == {str(i): {"i": i} for i in range(50)}
    store.close()


def test_memory_store_keeps_nothing():
    store = StateStore(":memory:")
    store.put("k", "a", {})
    assert store.load("k") == {"a": {}}
    store.close()
