"""RedisLink (the Redis engine's own RESP3 connection) and the engine's publishing through it, against a
real redis-server: replies and pub/sub messages on one connection in Redis's order, errors in
place, a lost connection failing what is in flight, AUTH and database selection, and the append
script surviving a Redis that forgot it."""

from __future__ import annotations

import asyncio
import uuid

import hiredis
import pytest
import redis
from conftest import free_port
from crash_helpers import wait_for
from redis_helpers import running_redis

from cometd_broker.engine.base import EngineUnavailable, Outgoing
from cometd_broker.engine.redis import RedisEngine
from cometd_broker.engine.redis_link import RedisLink
from cometd_broker.eventlog.redis import RedisEventLog, parse_version


async def _open(url: str, name: str = "link-test") -> RedisLink:
    return await RedisLink.open(url, client_name=name, timeout=5)


async def test_replies_and_messages_share_one_connection_in_redis_order(redis_server) -> None:
    link = await _open(redis_server.url)
    got: list[tuple[bytes, bytes]] = []
    try:
        await link.subscribe("fan", timeout=5)
        link.deliver_to(lambda channel, data: got.append((channel, data)))
        # A script that publishes to the link's own channel: the message and the reply both come back here.
        reply = await link.call("EVAL", "redis.call('PUBLISH', 'fan', ARGV[1]) return {1, 2}", 0, "hello")
        assert reply == [1, 2]
        assert got == [(b"fan", b"hello")]  # there by the time the reply is
        # Another client's publish, then a command of ours: Redis ran them in that order.
        other = redis.Redis.from_url(redis_server.url)
        try:
            assert other.publish("fan", b"from-elsewhere") == 1
        finally:
            other.close()
        assert await link.call("PING") == b"PONG"
        assert got[-1] == (b"fan", b"from-elsewhere")
    finally:
        link.close()


async def test_messages_before_deliver_to_are_kept_in_order(redis_server) -> None:
    link = await _open(redis_server.url)
    try:
        await link.subscribe("held", timeout=5)
        for n in range(3):
            await link.call("PUBLISH", "held", str(n))  # delivered to ourselves, nobody to hand them to yet
        got: list[bytes] = []
        link.deliver_to(lambda channel, data: got.append(data))
        assert got == [b"0", b"1", b"2"]
    finally:
        link.close()


async def test_an_error_reply_fails_its_own_call_only(redis_server) -> None:
    link = await _open(redis_server.url)
    try:
        first = link.call("SET", "k", "v")
        bad = link.call("HGET", "k", "f")  # wrong type
        last = link.call("GET", "k")
        assert await first == b"OK"
        with pytest.raises(hiredis.ReplyError, match="WRONGTYPE"):
            await bad
        assert await last == b"v"
    finally:
        link.close()


async def test_a_killed_connection_fails_what_is_in_flight_and_says_so(redis_server) -> None:
    link = await _open(redis_server.url, name="doomed-link")
    blocked = link.call("BLPOP", f"nothing-{uuid.uuid4().hex}", 10)  # in flight until the kill
    admin = redis.Redis.from_url(redis_server.url)
    try:
        [mine] = [c for c in admin.client_list() if c["name"] == "doomed-link"]
        admin.client_kill_filter(_id=mine["id"])
    finally:
        admin.close()
    with pytest.raises(ConnectionError, match="redis connection lost"):
        await asyncio.wait_for(blocked, 5)
    cause = await link.wait_closed()
    assert isinstance(cause, ConnectionError)
    with pytest.raises(ConnectionError, match="redis connection lost"):
        await link.call("PING")  # fails at once: no write to a closed transport


async def test_auth_and_database_come_from_the_url() -> None:
    with running_redis("--requirepass", "s3cret") as server:
        with pytest.raises(ConnectionError, match="refused the connection"):
            await _open(f"redis://:wrong@127.0.0.1:{server.port}/0")
        link = await _open(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        try:
            await link.call("SET", "where", "db3")
        finally:
            link.close()
        admin = redis.Redis(port=server.port, password="s3cret", db=3)
        try:
            assert admin.get("where") == b"db3"
        finally:
            admin.close()


async def test_an_unreachable_redis_fails_to_open_with_an_os_error() -> None:
    with pytest.raises(OSError):
        await _open(f"redis://127.0.0.1:{free_port()}/0")


# ---- the engine through its link ----------------------------------------------------------------


@pytest.fixture
async def engine(redis_server):
    """A RedisEngine (fresh key prefix) whose dispatch records what it is handed."""
    log = RedisEventLog(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    seen: list[tuple[str, bytes, int]] = []

    def dispatch(stream, channel, user_id, payload, event_id, has_ext) -> int:
        seen.append((stream, payload, event_id))
        return 1

    engine = RedisEngine(log, dispatch, backoff_min=0.05, backoff_max=0.2)
    await engine.start()
    engine.seen = seen  # type: ignore[attr-defined]
    yield engine
    await engine.close()
    await log.close()


async def test_a_batch_is_one_script_call_whose_echo_is_home_with_the_reply(engine) -> None:
    events = [Outgoing("/a", "/a", None, b"a1", False), Outgoing("/b", "/b", None, b"b1", False),
              Outgoing("/a", "/a", None, b"a2", False)]
    results = await engine.publish_many(events)
    assert [(r.event_id, r.delivered) for r in results] == [(1, 1), (1, 1), (2, 1)]
    assert engine.seen == [("/a", b"a1", 1), ("/b", b"b1", 1), ("/a", b"a2", 2)]
    assert engine.publish_calls == 1 and engine.fanout_messages == 1 and engine.echo_timeouts == 0


async def test_a_forgotten_script_costs_a_reconnect_and_one_clear_failure(engine, redis_server) -> None:
    assert (await engine.publish("/a", "/a", None, b"1", False)).event_id == 1
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.script_flush()  # an operator's SCRIPT FLUSH while the link is up
    finally:
        admin.close()
    [failed] = await engine.publish_many([Outgoing("/a", "/a", None, b"lost?", False)])
    assert isinstance(failed, EngineUnavailable) and "forgot the publish script" in str(failed)
    await wait_for(lambda: engine.connected and engine.reconnects == 1, 5, "the engine to reconnect")
    assert (await engine.publish("/a", "/a", None, b"2", False)).event_id == 2  # the script is loaded again
    assert [e.payload for e in await engine._log.read("/a", 0, 10)] == [b"1", b"2"]


async def test_publishing_survives_a_killed_connection(engine, redis_server) -> None:
    assert (await engine.publish("/a", "/a", None, b"1", False)).event_id == 1
    admin = redis.Redis.from_url(redis_server.url)
    try:
        [mine] = [c for c in admin.client_list(_type="pubsub") if c["name"] == engine._log.client_name]
        admin.client_kill_filter(_id=mine["id"])
    finally:
        admin.close()
    await wait_for(lambda: engine.disconnects == 1, 5, "the engine to notice its link is gone")
    await wait_for(lambda: engine.connected, 5, "the engine to reconnect")
    assert (await engine.publish("/a", "/a", None, b"2", False)).event_id == 2
    assert [e.payload for e in await engine._log.read("/a", 0, 10)] == [b"1", b"2"]
    assert [payload for _, payload, _ in engine.seen] == [b"1", b"2"]


async def test_publishes_of_one_turn_share_a_call_and_later_ones_are_pipelined_in_order(engine) -> None:
    first = [engine.publish_many([Outgoing("/a", "/a", None, f"a{n}".encode(), False)]) for n in range(3)]
    together = asyncio.gather(*first)  # started in one turn: one script call
    await asyncio.sleep(0)
    later = asyncio.gather(*(engine.publish("/a", "/a", None, f"b{n}".encode(), False) for n in range(3)))
    results = [r for [r] in await together] + list(await later)
    assert [r.event_id for r in results] == [1, 2, 3, 4, 5, 6]
    assert [payload for _, payload, _ in engine.seen] == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]
    assert engine.publish_calls == 2


async def test_an_append_redis_refuses_fails_that_publish_clearly(engine, redis_server) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.config_set("maxmemory", "1")  # every write is refused (OOM) until this is undone
        try:
            [result] = await engine.publish_many([Outgoing("/a", "/a", None, b"x", False)])
        finally:
            admin.config_set("maxmemory", "0")
    finally:
        admin.close()
    assert isinstance(result, EngineUnavailable) and "refused the append" in str(result) and "OOM" in str(result)
    assert engine.connected  # an error reply is not a lost connection
    assert (await engine.publish("/a", "/a", None, b"y", False)).event_id == 1


async def test_a_redis_that_stops_answering_is_dropped_and_reconnected(redis_server) -> None:
    log = RedisEventLog(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    engine = RedisEngine(log, lambda *event: 0, backoff_min=0.05, backoff_max=0.2, stall_timeout=0.3)
    await engine.start()
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.client_pause(1500)  # Redis holds every client's commands: our calls go unanswered
        [result] = await engine.publish_many([Outgoing("/a", "/a", None, b"x", False)])
        assert isinstance(result, EngineUnavailable) and "answered nothing" in str(result)
        await wait_for(lambda: engine.connected, 5, "the engine to reconnect after the pause")
        assert engine.disconnects == 1
    finally:
        admin.close()
        await engine.close()
        await log.close()


async def test_the_link_reads_the_server_version(redis_server) -> None:
    link = await _open(redis_server.url)
    try:
        assert link.server_version >= (6,) and len(link.server_version) == 3  # e.g. (7, 0, 15)
    finally:
        link.close()
    assert parse_version(b"7.2.4") == (7, 2, 4) and parse_version("6.2.x") == (6, 2, 0)


async def test_a_redis_older_than_7_is_refused_with_the_reason(redis_server, monkeypatch, caplog) -> None:
    # No Redis 6 here to run: the link reports one (the engine's check is what is under test).
    real_open = RedisLink.open

    async def open_as_redis_6(*args, **kwargs):
        link = await real_open(*args, **kwargs)
        link.server_version = (6, 2, 14)
        return link

    monkeypatch.setattr(RedisLink, "open", open_as_redis_6)
    log = RedisEventLog(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    engine = RedisEngine(log, lambda *event: 0, startup_wait=0.3, backoff_min=0.05, backoff_max=0.1)
    try:
        await engine.start()
        assert not engine.connected
        [result] = await engine.publish_many([Outgoing("/a", "/a", None, b"x", False)])
        assert isinstance(result, EngineUnavailable)
        assert "is 6.2.14: the cluster needs Redis 7.0 or newer" in caplog.text
    finally:
        await engine.close()
        await log.close()
