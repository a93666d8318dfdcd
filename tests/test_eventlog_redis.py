"""RedisEventLog: the same contract as every store (the tests of test_eventlog.py, run against a real
redis-server), plus what only Redis has: a shared log, ids across data loss, unavailability."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable

import pytest
import redis
import test_eventlog as contract
from hypothesis.stateful import precondition, rule
from test_eventlog import (  # noqa: F401  (collected here again, with this module's make_log)
    FakeClock,
    test_bounds,
    test_closed_log_refuses_calls,
    test_concurrent_appends_keep_order_and_unique_ids,
    test_empty_append_creates_nothing,
    test_ids_increase_per_stream_independently,
    test_max_count_is_enforced_on_append,
    test_payloads_must_be_bytes,
    test_read_pages_by_after_and_limit,
    test_read_range_orders_filters_and_pages,
    test_the_epoch_is_the_logs_and_comes_with_the_bounds,
    test_timestamps_never_go_backwards_within_a_stream,
    test_trim_by_age,
    test_trim_everything_never_reuses_ids,
)

from cometd_broker.engine.redis_link import RedisLink
from cometd_broker.eventlog import (
    KEEP_ALL,
    EventLog,
    EventLogUnavailable,
    Retention,
    RetentionTask,
    is_redis_url,
    open_event_log,
)
from cometd_broker.eventlog.redis import RedisEventLog


@pytest.fixture
async def make_log(redis_server):
    """Like test_eventlog's fixture: every call opens the same keys (a fresh prefix per test), so
    calling it again is another process opening the shared log."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    opened: list[EventLog] = []

    def make(retention: Retention = KEEP_ALL, clock: Callable[[], float] | None = None) -> EventLog:
        kwargs = {} if clock is None else {"clock": clock}
        log = RedisEventLog(redis_server.url, retention, prefix=prefix, **kwargs)
        opened.append(log)
        return log

    make.kind = "redis"  # type: ignore[attr-defined]
    yield make
    for log in opened:
        await log.close()


async def test_open_event_log_accepts_redis_urls(redis_server) -> None:
    log = open_event_log(redis_server.url, Retention(max_count=5), prefix=f"t{uuid.uuid4().hex[:12]}")
    try:
        assert isinstance(log, RedisEventLog) and isinstance(log, EventLog)
        assert log.retention == Retention(max_count=5)
        assert await log.append("/a", [b"x"]) == [1]
    finally:
        await log.close()
    assert is_redis_url("rediss://h:1/0") and is_redis_url("unix:///tmp/redis.sock")
    assert not is_redis_url("memory:") and not is_redis_url("/var/lib/events.db")
    with pytest.raises(ValueError, match="unsupported"):
        open_event_log("postgres://localhost/events")


async def test_two_openers_share_one_log_and_its_ids(make_log) -> None:
    first, second = make_log(), make_log()  # two broker processes on the same Redis
    assert await first.append("/a", [b"1"]) == [1]
    assert await second.append("/a", [b"2", b"3"]) == [2, 3]
    assert [e.payload for e in await first.read("/a", 0, 10)] == [b"1", b"2", b"3"]
    assert await second.bounds("/a") == (1, 3)


async def test_trim_by_age_of_a_long_stream_uses_the_stored_timestamps(make_log) -> None:
    clock = FakeClock(0.0)
    log = make_log(Retention(max_age=100), clock=clock)
    for second in range(0, 1000, 10):  # 100 events, one every 10 s
        clock.now = float(second)
        await log.append("/a", [str(second).encode()])
    assert await log.trim(now=1000.0) == 90  # cutoff 900: drops t=0..890, keeps t=900..990
    assert await log.bounds("/a") == (91, 100)
    assert (await log.read("/a", 0, 1))[0].timestamp == 900.0


async def _append_script(link: RedisLink, log: RedisEventLog, events, header: bytes) -> list[int]:
    """The append script as the Redis engine calls it, on its link (subscribed to "fanout")."""
    reply = await link.call("EVAL", log.append_script, 0, *log.append_args(events, channel="fanout", header=header))
    return log.parse_ids(reply)


@pytest.fixture
async def fanout_link(redis_server):
    """A link subscribed to "fanout" and the messages it received."""
    link = await RedisLink.open(redis_server.url, client_name="fanout-test", timeout=5)
    got: list[bytes] = []
    await link.subscribe("fanout", timeout=5)
    link.deliver_to(lambda channel, data: got.append(data))
    yield link, got
    link.close()


async def test_the_append_script_fans_out_atomically_with_the_id(make_log, fanout_link) -> None:
    log = make_log()
    link, got = fanout_link
    assert await _append_script(link, log, [("/a", b'{"n":1}', 0)], b'["h"]') == [1]
    # The floor: a broker that saw id 7 before Redis lost its data keeps ids increasing.
    assert await _append_script(link, log, [("/a", b'{"n":2}', 7)], b'["h"]') == [8]
    assert got == [b'1\n["h"]\n{"n":1}', b'8\n["h"]\n{"n":2}']  # here before the replies: one connection
    assert [e.id for e in await log.read("/a", 0, 10)] == [1, 8]
    # A floor behind the stream (another process appended since this one looked) is just passed by.
    assert await _append_script(link, log, [("/a", b'{"n":3}', 2)], b'["h"]') == [9]
    assert log.append_sha == hashlib.sha1(log.append_script.encode()).hexdigest()  # what the engine's EVALSHA names


async def test_a_stream_redis_lost_starts_again_above_the_floor_and_is_listed(make_log, fanout_link,
                                                                             redis_server) -> None:
    log = make_log()
    link, _ = fanout_link
    assert await _append_script(link, log, [("/a", b"1", 0), ("/b", b"1", 0)], b"H") == [1, 1]
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.delete(*admin.keys(f"{log.prefix}:*"))  # as if Redis restarted without its data
    finally:
        admin.close()
    # A broker that saw /a up to 40 publishes again: /a is created above it, and listed again;
    # /b, which it never saw, starts from 1.
    assert await _append_script(link, log, [("/a", b"2", 40), ("/b", b"2", 0)], b"H") == [41, 1]
    assert await log.bounds("/a") == (41, 41)
    assert await log.streams() == ["/a", "/b"]


async def test_a_flushed_redis_is_a_new_log_with_a_new_epoch(make_log, redis_server) -> None:
    first, second = make_log(), make_log()
    # Two processes asking at once for the epoch of a new log agree on one (SET NX GET).
    epochs = await asyncio.gather(first.epoch(), second.epoch(), first.bounds_with_epoch("/a"))
    epoch = epochs[0]
    assert epochs == [epoch, epoch, (epoch, (0, 0))]
    await first.append("/a", [b"1", b"2"])
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.delete(*admin.keys(f"{first.prefix}:*"))  # as if Redis restarted without its data
    finally:
        admin.close()
    await second.append("/a", [b"1 again"])
    renewed, bounds = await second.bounds_with_epoch("/a")
    assert renewed != epoch and bounds == (1, 1)
    assert await first.epoch() == renewed


async def test_a_batch_spans_streams_in_one_script_and_one_message(make_log, fanout_link) -> None:
    log = make_log()
    link, got = fanout_link
    await log.append("/a", [b"a1"])
    batch = [("/a", b"a2", 0), ("/b", b"b1", 0), ("/a", b"a3", 0), ("/b", b"b2", 5)]
    assert await _append_script(link, log, batch, b"H") == [2, 1, 3, 6]
    assert got == [b"2,1,3,6\nH\na2b1a3b2"]
    assert [(e.id, e.payload) for e in await log.read("/a", 0, 10)] == [(1, b"a1"), (2, b"a2"), (3, b"a3")]
    assert [(e.id, e.payload) for e in await log.read("/b", 0, 10)] == [(1, b"b1"), (6, b"b2")]
    assert await log.bounds("/b") == (1, 6)
    assert await log.streams() == ["/a", "/b"]


async def test_connections_redis_closed_cost_no_failed_command(make_log, redis_server) -> None:
    """As after a Redis restart: every pooled connection is dead, and the next commands notice it
    before sending (they reconnect) instead of failing once per dead connection."""
    log = make_log()
    await log.append("/a", [b"1"])
    await asyncio.gather(*(log.read("/a", 0, 5) for _ in range(4)))  # several connections in the pool
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.client_kill_filter(_type="normal", skipme=True)
    finally:
        admin.close()
    await asyncio.sleep(0.2)  # the loop has seen the connections close
    for _ in range(6):
        assert [e.payload for e in await log.read("/a", 0, 5)] == [b"1"]
    assert await log.bounds("/a") == (1, 1)
    assert await log.append("/a", [b"2"]) == [2]


async def test_an_append_to_a_redis_older_than_7_says_why_it_fails(make_log, monkeypatch) -> None:
    log = make_log()

    async def info_of_redis_6(*args, **kwargs):  # no Redis 6 here to run: it answers INFO as one would
        return {"redis_version": "6.2.14"}

    monkeypatch.setattr(log._client, "info", info_of_redis_6)
    with pytest.raises(EventLogUnavailable, match=r"is 6\.2\.14: the event log needs Redis 7\.0 or newer"):
        await log.append("/a", [b"x"])
    assert await log.streams() == []  # nothing was written


async def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    from conftest import free_port

    log = RedisEventLog(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    try:
        for call in (log.append("/a", [b"x"]), log.read("/a", 0, 1), log.bounds("/a"), log.streams(), log.epoch(),
                     log.bounds_with_epoch("/a")):
            with pytest.raises(EventLogUnavailable, match="unavailable"):
                await call
    finally:
        await log.close()


async def test_retention_task_trims_redis(make_log) -> None:
    clock = FakeClock(0.0)
    log = make_log(Retention(max_age=10, max_count=50), clock=clock)
    await log.append("/a", [b"old"])
    clock.now = 100.0
    task = RetentionTask(log, period=0.01, clock=clock)
    task.start()
    try:
        await contract.wait_for(lambda: task.runs >= 1)
        assert task.dropped == 1 and await log.bounds("/a") == (2, 1)
    finally:
        await task.stop()


# ---- the model-based test of test_eventlog.py, against Redis, with "restarts" (reopen) --------


class RedisEventLogMachine(contract.EventLogMachine):
    kind = "redis"
    one_clock = True
    url = ""  # set by the autouse fixture below

    def open(self) -> EventLog:
        if not hasattr(self, "prefix"):
            self.prefix = f"m{uuid.uuid4().hex[:12]}"
        return RedisEventLog(self.url, contract.MODEL_RETENTION, prefix=self.prefix, clock=self.clock)

    @precondition(lambda self: True)
    @rule()
    def restart(self) -> None:
        self.run(self.log.close())
        self.log = self.open()


@pytest.fixture(autouse=True)
def _machine_url(redis_server):
    RedisEventLogMachine.url = redis_server.url


TestRedisEventLogModel = RedisEventLogMachine.TestCase
TestRedisEventLogModel.settings = contract.MODEL_SETTINGS


async def test_a_log_from_before_the_clock_key_starts_from_its_newest_stream_stamp(make_log, redis_server) -> None:
    # Logs written by earlier versions kept a stamp per stream in the HASH {ns}:ts: the first append
    # of this version starts its clock from the largest, so no stream's timestamps go back.
    clock = FakeClock(400.0)
    log = make_log(clock=clock)
    admin = redis.Redis.from_url(redis_server.url)
    admin.hset(f"{log.prefix}:ts", mapping={f"{log.prefix}:log:/a": "450.5", f"{log.prefix}:log:/b": "420"})
    await log.append("/a", [b"1"])
    assert (await log.read("/a", 0, 1))[0].timestamp == 450.5
    assert admin.get(f"{log.prefix}:clock") == b"450.5"
    clock.now = 460.0
    await log.append("/c", [b"1"])
    assert (await log.read("/c", 0, 1))[0].timestamp == 460.0
    assert admin.get(f"{log.prefix}:clock") == b"460.0"
