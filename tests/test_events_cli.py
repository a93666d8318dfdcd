"""`cometd-broker events dump | tail | replay` against real broker subprocesses and their SQLite logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from conftest import TOKENS_OPTION, USERS_OPTION, RunningBroker, start_broker

TOKEN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def run_events(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cometd_broker", "events", *args], capture_output=True,
                          text=True, timeout=timeout)


async def run_events_async(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(run_events, *args, timeout=timeout)


def base(broker: RunningBroker) -> str:
    return f"http://127.0.0.1:{broker.port}"


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def admin_publish(broker: RunningBroker, events: list[dict]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(base(broker) + "/admin/publish", json=events, headers=AUTH) as response:
        assert response.status == 200, await response.text()


RECORDED = [
    {"channel": "/chat/room", "data": {"n": 1}},
    {"channel": "/v2/me/chats", "user": "alice", "data": {"chatUri": "http://h/api/v2/me/chats/IX-1", "n": 2}},
    {"channel": "/v2/me/smssessions", "user": "bob", "data": {"smssession": {"id": "IX-2"}, "n": 3}},
    {"channel": "/chat/room", "data": {"n": 4}},
    {"channel": "/v2/me/chats", "user": "alice", "data": {"interaction": {"id": "IX-2"}, "n": 5}},
    {"channel": "/chat/room", "data": {"n": 6}},
]


def broker_flags(*extra: str) -> list[str]:
    return ["--users", USERS_OPTION, "--tokens", TOKENS_OPTION, "--admin-token", TOKEN, *extra]


@pytest.fixture
async def recorded(tmp_path):
    """A broker subprocess writing tmp_path/events.db, with RECORDED published one request each (so
    every event has its own commit and timestamp). Yields (broker, log path, timestamps by n)."""
    path = str(tmp_path / "events.db")
    broker = start_broker(*broker_flags("--event-log", path))
    try:
        for event in RECORDED:
            await admin_publish(broker, [event])
            await asyncio.sleep(0.01)  # distinct timestamps, so time filters have edges to cut at
        yield broker, path
    finally:
        broker.stop()


async def dump(path: str, *args: str) -> list[dict]:
    result = await run_events_async("dump", "--event-log", path, *args)
    assert result.returncode == 0, result.stderr
    return lines(result.stdout)


# ------------------------------------------------------------------------------------- dump


async def test_dump_writes_every_event_as_json_lines_while_the_broker_runs(recorded):
    broker, path = recorded
    assert broker.process.poll() is None  # read through WAL next to the running writer
    result = await run_events_async("dump", "--event-log", path)
    assert result.returncode == 0, result.stderr
    records = lines(result.stdout)
    assert [r["message"]["data"]["n"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) == {"stream", "id", "timestamp", "time", "message"} for r in records)
    for r in records:  # the same moment in ISO 8601 UTC, to the millisecond
        assert r["time"] == datetime.fromtimestamp(r["timestamp"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert [(r["stream"], r["id"]) for r in records[:3]] == [
        ("/chat/room", 1), ("@alice/v2/me/chats", 1), ("@bob/v2/me/smssessions", 1)]
    assert records[1]["message"]["channel"] == "/v2/me/chats"
    assert "dumped 6 events" in result.stderr


async def test_dump_filters_by_user_channel_interaction_time_and_id(recorded):
    _, path = recorded
    every = await dump(path)
    ns = lambda records: [r["message"]["data"]["n"] for r in records]  # noqa: E731
    assert ns(await dump(path, "--user", "alice")) == [2, 5]
    assert ns(await dump(path, "--channel", "/chat/room")) == [1, 4, 6]
    assert ns(await dump(path, "--channel", "/v2/me/**")) == [2, 3, 5]
    assert ns(await dump(path, "--user", "alice", "--channel", "/v2/me/chats")) == [2, 5]
    assert ns(await dump(path, "--interaction", "IX-2")) == [3, 5]
    assert ns(await dump(path, "--interaction", "IX-1")) == [2]
    assert ns(await dump(path, "--stream", "/chat/room", "--after-id", "1")) == [4, 6]
    since, until = every[2]["timestamp"], every[4]["timestamp"]
    assert ns(await dump(path, "--since", repr(since), "--until", repr(until))) == [3, 4]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(every[0]["timestamp"] - 1)) + "Z"
    assert ns(await dump(path, "--since", iso, "--limit", "2")) == [1, 2]
    assert ns(await dump(path, "--since=-1h", "--user", "bob")) == [3]
    assert await dump(path, "--user", "nobody") == []


async def test_dump_to_a_file(recorded, tmp_path):
    _, path = recorded
    out = tmp_path / "out.jsonl"
    result = await run_events_async("dump", "--event-log", path, "--channel", "/chat/room", "--output", str(out))
    assert result.returncode == 0 and result.stdout == ""
    assert [r["id"] for r in lines(out.read_text())] == [1, 2, 3]


@pytest.mark.parametrize(("args", "message"), [
    (["dump", "--event-log", "/nonexistent/events.db"], "event log '/nonexistent/events.db' not found"),
    (["dump", "--event-log", "{log}", "--since", "last tuesday"], "bad since 'last tuesday'"),
    (["dump", "--event-log", "{log}", "--until", "2024-13-45"], "bad until '2024-13-45'"),
    (["dump", "--event-log", "{log}", "--limit", "0"], "--limit must be >= 1"),
    (["dump", "--event-log", "{log}", "--channel", "chat"], "bad channel 'chat'"),
    (["dump", "--event-log", "{notdb}"], "is not a readable SQLite event log"),
    (["dump", "--event-log", "{otherdb}"], "is a SQLite file but not an event log"),
    (["replay", "--event-log", "{log}", "--to-url", "http://127.0.0.1:9", "--admin-token", TOKEN,
      "--speed", "fast"], "--speed must be a number > 0"),
    (["replay", "--event-log", "{log}", "--to-url", "ftp://x", "--admin-token", TOKEN], "--to-url must be an http"),
    (["tail", "--url", "http://127.0.0.1:9", "--admin-token", TOKEN], "cannot tail http://127.0.0.1:9"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, args, message):
    log = tmp_path / "empty.db"
    log.touch()  # an empty file is a valid (empty) SQLite database
    notdb = tmp_path / "notdb.db"
    notdb.write_bytes(b"this is not sqlite" * 100)
    otherdb = tmp_path / "other.db"
    with sqlite3.connect(otherdb) as conn:
        conn.execute("CREATE TABLE documents (id TEXT)")
    conn.close()
    result = run_events(*[a.format(log=log, notdb=notdb, otherdb=otherdb) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("cometd-broker events:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_log_is_not_created(tmp_path):
    result = run_events("dump", "--event-log", str(tmp_path / "typo.db"))
    assert result.returncode == 2 and not (tmp_path / "typo.db").exists()


ROOT = Path(__file__).resolve().parent.parent


def run_configured(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`events ...` with only `env` of the COMETD_BROKER_* variables (not conftest's), from `cwd`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMETD_BROKER_")}
    return subprocess.run([sys.executable, "-m", "cometd_broker", "events", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, "PYTHONPATH": str(ROOT), **env}, cwd=cwd or ROOT)


async def test_dump_finds_the_log_as_serve_does_from_the_environment_or_the_config_file(recorded, tmp_path):
    _, path = recorded
    result = await asyncio.to_thread(run_configured, "dump", env={"COMETD_BROKER_EVENT_LOG": path})
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == len(RECORDED)

    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\nevent-log = "{path}"\n[contact-center]\nqueues = "a,b"\n', encoding="utf-8")
    for args, env in ((("--config", str(config)), {}), ((), {"COMETD_BROKER_CONFIG": str(config)})):
        result = await asyncio.to_thread(run_configured, "dump", "--user", "alice", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert {r["stream"] for r in lines(result.stdout)} == {"@alice/v2/me/chats"}
    # A flag wins over the environment, as for serve.
    result = await asyncio.to_thread(run_configured, "dump", "--event-log", path,
                                     env={"COMETD_BROKER_EVENT_LOG": str(tmp_path / "other.db")})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("env", "args", "message"), [
    ({}, (), "event log 'cometd-broker-events.db' not found (looked for the SQLite file {cwd}/cometd-broker-events.db, "
             "from the default)"),
    ({"COMETD_BROKER_EVENT_LOG": "typo.db"}, (), "{cwd}/typo.db, from COMETD_BROKER_EVENT_LOG)"),
    ({"COMETD_BROKER_EVENT_LOG": "memory:"}, (), "(from COMETD_BROKER_EVENT_LOG) is kept in a broker's memory"),
    ({}, ("--config", "{cwd}/broker.toml"), "{cwd}/gone.db, from {cwd}/broker.toml [broker] event-log)"),
    ({}, ("--config", "{cwd}/missing.toml"), "cannot read config file {cwd}/missing.toml"),
])
def test_a_log_that_is_not_there_says_where_it_was_looked_for(tmp_path, env, args, message):
    (tmp_path / "broker.toml").write_text('[broker]\nevent-log = "gone.db"\n', encoding="utf-8")
    result = run_configured("dump", *[a.format(cwd=tmp_path) for a in args], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("cometd-broker events:")]
    assert len(error_lines) == 1 and message.format(cwd=tmp_path) in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cometd-broker-events.db").exists()


async def test_dump_into_a_closed_pipe_stops_quietly(recorded):
    """`events dump | head -1`: the reader goes away before the dump is written."""
    _, path = recorded
    process = subprocess.Popen([sys.executable, "-m", "cometd_broker", "events", "dump", "--event-log", path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the interpreter has even started: every write meets a broken pipe
    _, err = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipeError" not in err and b"Exception ignored" not in err, err


# ------------------------------------------------------------------------------------- tail


async def test_tail_follows_a_running_broker_with_filters(recorded):
    broker, _ = recorded
    start = repr(time.time())
    tail = asyncio.create_task(run_events_async(
        "tail", "--url", base(broker), "--admin-token", TOKEN, "--user", "alice", "--since", start,
        "--count", "2", "--duration", "20", timeout=30))
    await asyncio.sleep(0.3)
    await admin_publish(broker, [{"channel": "/chat/room", "data": {"n": 7}},
                                 {"channel": "/v2/me/chats", "user": "alice", "data": {"n": 8}}])
    await asyncio.sleep(0.3)
    await admin_publish(broker, [{"channel": "/v2/me/chats", "user": "alice", "data": {"n": 9}}])
    result = await tail
    assert result.returncode == 0, result.stderr
    assert [(r["stream"], r["id"], r["message"]["data"]["n"]) for r in lines(result.stdout)] == [
        ("@alice/v2/me/chats", 3, 8), ("@alice/v2/me/chats", 4, 9)]


async def test_tail_with_a_wrong_token_says_so(recorded):
    broker, _ = recorded
    result = await run_events_async("tail", "--url", base(broker), "--admin-token", "wrong-token-0123456789")
    assert result.returncode == 2 and "HTTP 401: wrong admin token" in result.stderr


def test_ctrl_c_stops_tail_cleanly():
    broker = start_broker(*broker_flags())
    try:
        # As from a terminal: a test run started in the background of a shell without job control has
        # SIGINT ignored, and the tool would inherit that (Python keeps an ignored SIGINT ignored).
        process = subprocess.Popen([sys.executable, "-m", "cometd_broker", "events", "tail", "--url", base(broker),
                                    "--duration", "30"], env={**os.environ, "COMETD_BROKER_ADMIN_TOKEN": TOKEN},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert "following" in process.stderr.readline()  # connected and waiting on the tail
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
        assert process.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
    finally:
        broker.stop()


# ------------------------------------------------------------------------------------- replay


class Subscriber:
    """A raw long-polling Bayeux client of a broker subprocess."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.client_id = http, url, ""

    async def send(self, *messages: dict) -> list[dict]:
        for message in messages:
            message.setdefault("clientId", self.client_id)
        async with self.http.post(self.url, json=list(messages)) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def open(self, user: str, *channels: str) -> None:
        [reply] = await self.send({"channel": "/meta/handshake", "version": "1.0",
                                   "supportedConnectionTypes": ["long-polling"],
                                   "ext": {"authentication": {"user": user, "password": f"{user}-secret"}}})
        assert reply["successful"], reply
        self.client_id = reply["clientId"]
        for channel in channels:
            [reply] = await self.send({"channel": "/meta/subscribe", "subscription": channel})
            assert reply["successful"], reply
        await self.send({"channel": "/meta/connect", "connectionType": "long-polling"})

    async def receive(self, count: int, timeout: float = 15.0) -> list[dict]:
        events: list[dict] = []
        async with asyncio.timeout(timeout):
            while len(events) < count:
                replies = await self.send({"channel": "/meta/connect", "connectionType": "long-polling",
                                           "advice": {"timeout": 2000}})
                events += [m for m in replies if "successful" not in m and "data" in m]
        return events


async def test_replay_republishes_a_recorded_range_into_another_broker_in_order(recorded):
    _, path = recorded
    target = start_broker(*broker_flags())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            alice = Subscriber(http, target.url)
            await alice.open("alice", "/chat/room", "/v2/me/chats")
            result = await run_events_async("replay", "--event-log", path, "--to-url", base(target),
                                            "--admin-token", TOKEN, "--speed", "max")
            assert result.returncode == 0, result.stderr
            assert "replayed 6/6 events" in result.stderr
            events = await alice.receive(5)
        assert [(e["channel"], e["data"]["n"]) for e in events] == [
            ("/chat/room", 1), ("/v2/me/chats", 2), ("/chat/room", 4), ("/v2/me/chats", 5), ("/chat/room", 6)]
        assert [e["ext"]["replayId"] for e in events if e["channel"] == "/chat/room"] == [1, 2, 3]
    finally:
        target.stop()


async def test_replay_at_recorded_pace_keeps_the_gaps(tmp_path):
    path = str(tmp_path / "paced.db")
    source = start_broker(*broker_flags("--event-log", path))
    try:
        for n in range(3):
            await admin_publish(source, [{"channel": "/chat/room", "data": {"n": n}}])
            await asyncio.sleep(0.6)
    finally:
        source.stop()
    target = start_broker(*broker_flags())
    try:
        started = time.monotonic()
        result = await run_events_async("replay", "--event-log", path, "--to-url", base(target),
                                        "--admin-token", TOKEN, "--speed", "1")
        paced = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        started = time.monotonic()
        result = await run_events_async("replay", "--event-log", path, "--to-url", base(target),
                                        "--admin-token", TOKEN, "--speed", "4")
        faster = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        # Two recorded gaps of ~0.6 s: ~1.2 s at pace, ~0.3 s at 4x (process start-up, which varies by
        # a few tenths on a busy machine, is in both).
        assert paced - faster > 0.5, (paced, faster)
    finally:
        target.stop()


async def test_replay_to_a_subscriber_session_publishes_shared_events(recorded):
    _, path = recorded
    target = start_broker(*broker_flags())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            bob = Subscriber(http, target.url)
            await bob.open("bob", "/chat/**")
            result = await run_events_async("replay", "--event-log", path, "--subscriber-url", target.url,
                                            "--bayeux-token", "carol-token", "--speed", "max")
            assert result.returncode == 0, result.stderr
            assert "3 per-user events skipped" in result.stderr
            events = await bob.receive(3)
        assert [e["data"]["n"] for e in events] == [1, 4, 6]
    finally:
        target.stop()


async def test_replay_with_a_wrong_token_fails_clearly(recorded):
    broker, path = recorded
    result = await run_events_async("replay", "--event-log", path, "--to-url", base(broker),
                                    "--admin-token", "wrong-token-0123456789", "--speed", "max")
    assert result.returncode == 2
    assert "HTTP 401: wrong admin token" in result.stderr and "Traceback" not in result.stderr
